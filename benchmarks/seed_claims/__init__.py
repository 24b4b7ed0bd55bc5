"""Four claims of the seed papers, tested with optax_usam: each one a figure, numbers and a verdict.

1. ``quadratic`` (Khanh et al., NeurIPS 2024): on a strongly convex quadratic, GD with a constant step
   converges, SAM with a constant step does not reach the minimizer (it ends on the period-2 orbit of the
   closed form), SAM with diminishing steps does.
2. ``almost_constant`` (Khanh et al., Remark 3.6): SAM with the almost constant radius ``C/k^p`` behaves like
   SAM with the constant radius ``C`` on ``sum_i log(1 + (Ax - b)_i^2)``, n = 2, 20, 50, 100.
3. ``neighbourhood`` (Si & Yun, NeurIPS 2023): stochastic SAM with a constant radius stops at a neighbourhood
   of size ``O(rho^2)``; deterministic SAM with the same steps goes much further.
4. ``nonconvex``: a labelled stand-in for Theorem 3.7 of Oikonomou & Loizou (its statement could not be
   read): ``E||grad f(x_T)||`` against T with ``gamma, rho ~ 1/sqrt(T)`` on a non-convex finite sum.

Every run is ``optax.chain(optax_usam.unified_sam(...), optax.sgd(schedule))`` in float64, under
``lax.scan`` (or ``fori_loop``) and vmapped over methods, settings and trials. Each verdict is computed from
the measured numbers by the rules stated with it (``holds`` when every rule passes, ``does not hold`` when
none does, ``partly`` otherwise); the script prints the verdict table as markdown.

  python -m benchmarks.seed_claims                   # the full run
  python -m benchmarks.seed_claims --quick           # a short run, into benchmarks/results/seed_claims/quick/
  python -m benchmarks.seed_claims --claims quadratic nonconvex --no-plots

Writes ``benchmarks/results/seed_claims/seed_claims.json`` and ``seed_claims_<claim>.png``: the full run
only; any other run (``--quick``, another seed, a subset of claims, ``--no-plots``) writes to
``benchmarks/results/seed_claims/quick/`` unless ``--out`` says otherwise, so a short run never replaces the
committed results. The modules: one per
claim, ``common`` (records, verdicts, slopes) and ``cli`` (the command line).
"""
