"""Run orchestration: the curriculum runner (experiment), stages, typed settings, method factory, threads."""
