"""Benchmarks a user can trust: `ssmc bench` and the pytest-benchmark suite in benchmarks/.

    subject.py      what is timed: a Recipe, the Impls of a subject, the baseline names
    op_cases.py     the ops (selective_scan, ssd): ssmc's op, eager, torch.compile, peers
    model_cases.py  a whole spec: ssmc.compile against its eager reference and torch.compile
    peers.py        mamba-ssm and flash-linear-attention when installed (GPU only)
    timing.py       warm-up, repeats, outliers, the median (a fake clock drives it in tests)
    roofline.py     memory / compute / exp bounds from the cost model's counts
    isolate.py      torch.compile in a child process, so its compile time can be capped
    harness.py      every implementation at every length into one record
    report.py       the record's JSON schema, its check, the printed table
    plot.py         time against L, log-log, with the roofline
    env.py          device, versions, date, load
    cli.py          the `ssmc bench` subcommand
"""
