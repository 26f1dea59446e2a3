"""The diagnosis layer: why a checkpoint does not fit a model, and the proven fix.

One way down; a module imports only modules above it in this list:

- :mod:`~ckptdiff.diagnosis.compare`: manifests in, every key classified (pure, no torch);
- :mod:`~ckptdiff.diagnosis.prefixes`, :mod:`~ckptdiff.diagnosis.conventions`,
  :mod:`~ckptdiff.diagnosis.transforms`, :mod:`~ckptdiff.diagnosis.tensor_ops`,
  :mod:`~ckptdiff.diagnosis.alignment`: key maps (align);
- :mod:`~ckptdiff.diagnosis.cause_finding`, :mod:`~ckptdiff.diagnosis.grid`,
  :mod:`~ckptdiff.diagnosis.lint`, :mod:`~ckptdiff.diagnosis.causes`: causes and consistency
  (explain);
- :mod:`~ckptdiff.diagnosis.fields`, :mod:`~ckptdiff.diagnosis.probe`,
  :mod:`~ckptdiff.diagnosis.solve`, :mod:`~ckptdiff.diagnosis.rounds`,
  :mod:`~ckptdiff.diagnosis.suggest`, :mod:`~ckptdiff.diagnosis.heads`: candidate config
  values and calls (suggest), built through a callable the verifier hands them;
- :mod:`~ckptdiff.diagnosis.verify` (the one verifier, the only caller of rebuilds) and
  :mod:`~ckptdiff.diagnosis.fixes`: every suggestion applied as the user gets it and judged
  (verify);
- :mod:`~ckptdiff.diagnosis.diagnose` and :mod:`~ckptdiff.diagnosis.emit`: the whole
  diagnosis of a comparison, and what ``--emit-config`` / ``--emit-key-map`` write (the CLI
  writes the files).

The use cases (:mod:`ckptdiff._diff`, :mod:`ckptdiff._check`, :mod:`ckptdiff._identify`,
:mod:`ckptdiff._audit`) call it; the CLI calls them.
"""
