"""Decoding helpers: answer tries (constraint masks) and, later, the plugin's sequence generator."""
