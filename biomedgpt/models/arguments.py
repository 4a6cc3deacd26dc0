"""Command-line arguments of the `ofa` model (legacy argparse, the reference's names and meanings).

fairseq adds these in a group with `argument_default=SUPPRESS`, so an unspecified flag is absent and the
architecture defaults in `architectures.py` decide its value.
"""
from fairseq import utils

_FLAGS = {
    # standard transformer switches
    "encoder-normalize-before": "apply layernorm before each encoder block",
    "decoder-normalize-before": "apply layernorm before each decoder block",
    "encoder-learned-pos": "use learned positional embeddings in the encoder (always on in OFA)",
    "decoder-learned-pos": "use learned positional embeddings in the decoder (always on in OFA)",
    "share-decoder-input-output-embed": "share decoder input and output embeddings",
    "share-all-embeddings": "share encoder, decoder and output embeddings (requires a joined dictionary)",
    "no-token-positional-embeddings": "accepted for compatibility; OFA always uses positions",
    "layernorm-embedding": "add layernorm to the text embedding",
    "no-scale-embedding": "do not scale embeddings by sqrt(dim)",
    "checkpoint-activations": "recompute layer activations in the backward pass to save memory",
    "offload-activations": "checkpoint activations and offload them to CPU (implies --checkpoint-activations)",
    "no-cross-attention": "accepted for compatibility; OFA decoders always attend to the encoder",
    "cross-self-attention": "accepted for compatibility; not used by OFA",
    # OFA switches
    "bitfit": "train only biases of layer norms and FFNs (BitFit)",
    "freeze-encoder": "accepted for compatibility; a no-op in the reference",
    "freeze-decoder": "accepted for compatibility; a no-op in the reference",
    "adapter": "add a bottleneck adapter to every layer",
    "encoder-prompt": "prefix tuning of the encoder",
    "decoder-prompt": "prefix tuning of the decoder",
    "encoder-prompt-projection": "reparametrise encoder prefixes through an MLP",
    "decoder-prompt-projection": "reparametrise decoder prefixes through an MLP",
    "freeze-resnet": "replace ResNet BatchNorm by FrozenBatchNorm2d",
    "freeze-resnet-weights": "(plugin) give no ResNet weight a gradient; with --freeze-resnet the trunk is a fixed "
                             "feature extractor (e.g. a pre-trained --resnet-model-path)",
    "freeze-encoder-embedding": "freeze the (shared) token embedding from the encoder side",
    "freeze-decoder-embedding": "freeze the (shared) token embedding from the decoder side",
    "add-type-embedding": "add a text/image type embedding",
    "interpolate-position": "bilinearly interpolate image position embeddings for larger images",
    "patch-layernorm-embedding": "add layernorm to the image patch embedding",
    "code-layernorm-embedding": "use a separate embedding layernorm for image-code tokens",
    "entangle-position-embedding": "add absolute positions to the encoder input embeddings",
    "disable-entangle": "do not add absolute positions to the decoder input embeddings",
    "sync-bn": "use SyncBatchNorm (eps 1e-3) in the ResNet",
    "scale-attn": "layernorm on attention outputs (NormFormer)",
    "scale-fc": "layernorm inside the FFN (NormFormer)",
    "scale-heads": "learned per-head attention output scale (NormFormer)",
    "scale-resids": "learned per-dimension residual scale (NormFormer)",
    "spectral-norm-classification-head": "spectral normalisation on classification heads",
}

_VALUES = [
    # (flag, type, metavar/choices, help)
    ("activation-fn", str, utils.get_available_activation_fns(), "activation function"),
    ("dropout", float, "D", "dropout probability"),
    ("attention-dropout", float, "D", "dropout probability for attention weights"),
    ("activation-dropout", float, "D", "dropout probability after the FFN activation"),
    ("relu-dropout", float, "D", "alias of --activation-dropout"),
    ("encoder-embed-path", str, "STR", "path to pre-trained encoder embedding"),
    ("encoder-embed-dim", int, "N", "encoder embedding dimension"),
    ("encoder-ffn-embed-dim", int, "N", "encoder FFN dimension"),
    ("encoder-layers", int, "N", "number of encoder layers"),
    ("encoder-attention-heads", int, "N", "number of encoder attention heads"),
    ("decoder-embed-path", str, "STR", "path to pre-trained decoder embedding"),
    ("decoder-embed-dim", int, "N", "decoder embedding dimension"),
    ("decoder-ffn-embed-dim", int, "N", "decoder FFN dimension"),
    ("decoder-layers", int, "N", "number of decoder layers"),
    ("decoder-attention-heads", int, "N", "number of decoder attention heads"),
    ("decoder-output-dim", int, "N", "decoder output dimension"),
    ("adaptive-softmax-cutoff", str, "EXPR", "not supported by OFA checkpoints (must stay unset)"),
    ("adaptive-softmax-dropout", float, "D", "adaptive softmax dropout"),
    ("encoder-layerdrop", float, "D", "LayerDrop probability for the encoder"),
    ("decoder-layerdrop", float, "D", "LayerDrop probability for the decoder"),
    ("encoder-layers-to-keep", str, None, "accepted for compatibility (pruning is not supported)"),
    ("decoder-layers-to-keep", str, None, "accepted for compatibility (pruning is not supported)"),
    ("quant-noise-pq", float, "D", "iterative product-quantisation noise"),
    ("quant-noise-pq-block-size", int, "D", "block size of quantisation noise"),
    ("quant-noise-scalar", float, "D", "scalar quantisation noise (accepted; not applied)"),
    ("min-params-to-wrap", int, "D", "FSDP: minimum parameters to wrap a layer"),
    ("adapter-dim", int, "N", "adapter bottleneck size"),
    ("encoder-prompt-type", str, ["prefix"], "encoder prompt type"),
    ("decoder-prompt-type", str, ["prefix"], "decoder prompt type"),
    ("encoder-prompt-length", int, "N", "encoder prefix length"),
    ("decoder-prompt-length", int, "N", "decoder prefix length"),
    ("encoder-prompt-dim", int, "N", "hidden size of the encoder prefix MLP"),
    ("decoder-prompt-dim", int, "N", "hidden size of the decoder prefix MLP"),
    ("resnet-drop-path-rate", float, "D", "drop path rate inside ResNet blocks"),
    ("encoder-drop-path-rate", float, "D", "drop path rate of encoder residual branches"),
    ("decoder-drop-path-rate", float, "D", "drop path rate of decoder residual branches"),
    ("token-bucket-size", int, "N", "1-D relative position bucket size"),
    ("image-bucket-size", int, "N", "image grid side for 2-D positions"),
    ("attn-scale-factor", float, "D", "attention logits are scaled by (head_dim * factor)^-0.5"),
    ("resnet-type", str, ["resnet50", "resnet101", "resnet152"], "ResNet trunk"),
    ("resnet-model-path", str, "STR", "ImageNet ResNet weights to load into the trunk"),
    ("code-image-size", int, "N", "image size of VQ-GAN codes (decoder code window = size // 8)"),
    ("pooler-dropout", float, "D", "dropout in classification heads"),
    ("pooler-classifier", str, ["mlp", "linear"], "classification head type"),
    ("pooler-activation-fn", str, utils.get_available_activation_fns(), "classification head activation"),
]


def add_model_args(parser) -> None:
    """Register every `ofa` model argument on `parser`."""
    for flag, helptext in _FLAGS.items():
        parser.add_argument(f"--{flag}", action="store_true", help=helptext)
    for flag, kind, meta, helptext in _VALUES:
        if isinstance(meta, list):
            parser.add_argument(f"--{flag}", type=kind, choices=meta, help=helptext)
        else:
            parser.add_argument(f"--{flag}", type=kind, metavar=meta, help=helptext)
