"""Data utilities of the plugin: vocabulary, (later) TSV readers, image/text processing and datasets."""
