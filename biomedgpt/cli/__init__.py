"""Console commands of the plugin."""
