"""``python -m examples.train``: the main job (:mod:`examples.train.job`)."""

import sys

from examples.train.job import main

sys.exit(main())
