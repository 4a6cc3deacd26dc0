"""The main job of the README: BiomedGPT learning easy-VQA end to end through stock fairseq commands."""
