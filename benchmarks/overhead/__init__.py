"""What one Unified SAM step costs, next to the two-gradient limit and its peers.

For every model, one training step of each variant is compiled once and timed
in interleaved rounds (A B C ... A B C ...), so that the load other processes
put on the machine hits every variant alike; ratios are taken within a round
and summarised by their median:

  (a) ``sgd``            one ``value_and_grad`` and momentum SGD, by hand;
  (b) ``limit``          the minimal SAM step by hand: two gradients, the
                         global norm, the perturbed point, momentum SGD;
  (c) ``usam[...]``      ``optax.chain(optax_usam.unified_sam(rho, lambda),
                         optax.sgd(lr, momentum))`` for lambda in 0, 1, 1-1/t;
  (d) ``optax_sam``      ``optax.contrib.sam`` with a normalized-SGD adversary
                         (``opaque_mode=True``, ``sync_period=2``): SAM;
  (e) ``torch_sgd``, ``torch_usam``  PyTorch (eager) SGD and the official
                         ``unifiedsam.unifiedSAM`` (lambda = 1), same model,
                         batch and thread count;

the cheaper variants (``reuse[k=...]``, ``random[p=...]``,
``subbatch[f=...]``), timed against ``sgd``, and

  (f) the SAM family  ``vasso``, ``friendly_sam``, ``momentum_sam``,
                      ``random_smoothing_sam``, ``gsam`` (``optax_usam``'s
                      constructors, lambda = 1): two gradients each but
                      ``momentum_sam``, which takes one (the first pass
                      skipped, as ``needs_fresh_gradient`` says), timed
                      against ``sgd``.

For the JAX rows it also records the compiled temporary memory
(``memory_analysis().temp_size_in_bytes``), the trace and compile times, and
what the optimized HLO does (``benchmarks/hlo.py``): dot products and
convolutions, and the instructions of the entry computation that produce
arrays (the work that grows with the model) or scalars (norms, schedules,
diagnostics).

Models (``benchmarks/models.py``): ``tiny_mlp`` (4-4-4-4, batch 2: all fixed
per-step cost, outside the targets), ``mlp`` (64-256-256-10, batch 128),
``wide_mlp`` (64-1024-1024-10), ``resnet8`` (CIFAR ResNet-8, 32x32x3, batch
128), ``wrn16_4`` (WRN-16-4, batch 32 by default: ``--wrn-batch``) and, for
accelerators, ``wrn28_10``.

Run from the repository root::

  python -m benchmarks.overhead            # about 10 minutes on 2 busy cores
  python -m benchmarks.overhead --quick    # no WRN, fewer rounds: about 2 minutes
  python -m benchmarks.overhead --replot   # the table and chart again from overhead.json
  python -m benchmarks.overhead --rows family --no-torch   # sgd, limit and (f) only

Prints a markdown table and the targets met or missed, and writes ``NAME.json``
and ``NAME.png`` (``--name``, default ``overhead``): the full run (every option
at its default) and a run named otherwise into ``benchmarks/results/overhead/``,
where the docs quote them; any other run (``--quick``, other settings) into its
``quick/``, ignored by git, unless ``--out`` says otherwise.

The modules, in the order a run uses them: ``steps`` (the variants),
``measure`` (compiling and timing one model), ``results`` (targets, table,
chart) and ``cli`` (the command line).
"""
