"""One dataset module per task: TSV row -> OFA sample."""
