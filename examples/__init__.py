"""The examples: single files to copy, and the harness behind `make train` (`examples/train/`)."""
