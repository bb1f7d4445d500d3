"""The signflow Trainer module: run.run_fn (what TFX calls) over data / model / train / export / report."""
