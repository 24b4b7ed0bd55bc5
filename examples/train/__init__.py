"""The comparison harness behind ``make train``: ``python -m examples.train`` from the repository's root.

Its modules, by idea: ``job`` (the command line and the run), ``methods`` (the methods and their optimizer:
the SAM part), ``digits_runner`` and ``cifar_runner`` (the two jobs), ``checkpoints`` (the CIFAR run
directories), ``training`` and ``progress`` (what both jobs share), ``results`` (the table, JSON and figure),
``data``, ``models`` and ``pooling`` (the datasets and the networks), ``compilations`` (the XLA compilation
count) and ``cli`` (the one-line errors of every command here and under ``benchmarks/``). ``distributed`` is a
second command, ``python -m examples.train.distributed``: data-parallel and FSDP training on several devices
or hosts.

The standalone examples beside this package (``examples/quickstart.py``, ``examples/equinox_mlp.py``) import
none of it: each is one file to copy.
"""
