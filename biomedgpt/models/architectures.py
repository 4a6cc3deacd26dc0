"""Named presets of the `ofa` model: `ofa_tiny`, `ofa_medium`, `ofa_base`, `ofa_large`, `ofa_huge`.

Each preset only sets sizes; `ofa_defaults` fills every other argument with the reference's value
(values already on `args`, i.e. given on the command line, always win).
"""
from fairseq.models import register_model_architecture

_SIZES = {
    # arch: (embed dim, enc layers, dec layers, heads, resnet)
    "ofa_tiny": (256, 4, 4, 4, "resnet50"),
    "ofa_medium": (512, 4, 4, 8, "resnet101"),
    "ofa_base": (768, 6, 6, 12, "resnet101"),
    "ofa_large": (1024, 12, 12, 16, "resnet152"),
    "ofa_huge": (1280, 24, 12, 16, "resnet152"),
}

_DEFAULTS = {
    "encoder_embed_path": None, "decoder_embed_path": None,
    "encoder_learned_pos": True, "decoder_learned_pos": True,
    "encoder_normalize_before": True, "decoder_normalize_before": True,
    "attention_dropout": 0.0, "activation_dropout": 0.0, "relu_dropout": 0.0, "dropout": 0.0,
    "activation_fn": "gelu", "adaptive_softmax_cutoff": None, "adaptive_softmax_dropout": 0,
    "max_source_positions": 1024, "max_target_positions": 1024,
    "share_decoder_input_output_embed": True, "share_all_embeddings": True,
    "no_token_positional_embeddings": False, "adaptive_input": False, "tie_adaptive_weights": False,
    "no_cross_attention": False, "cross_self_attention": False,
    "layernorm_embedding": True, "no_scale_embedding": True,
    "checkpoint_activations": False, "offload_activations": False,
    "encoder_layerdrop": 0, "decoder_layerdrop": 0,
    "encoder_layers_to_keep": None, "decoder_layers_to_keep": None,
    "quant_noise_pq": 0, "quant_noise_pq_block_size": 8, "quant_noise_scalar": 0,
    "min_params_to_wrap": int(1e8),
    "bitfit": False, "freeze_encoder": False, "freeze_decoder": False,
    "adapter": False, "adapter_dim": 200,
    "encoder_prompt": False, "decoder_prompt": False,
    "encoder_prompt_type": "prefix", "decoder_prompt_type": "prefix",
    "encoder_prompt_projection": False, "decoder_prompt_projection": False,
    "encoder_prompt_length": 100, "decoder_prompt_length": 100,
    "resnet_drop_path_rate": 0.0, "encoder_drop_path_rate": 0.0, "decoder_drop_path_rate": 0.0,
    "token_bucket_size": 256, "image_bucket_size": 42, "attn_scale_factor": 2,
    "freeze_resnet": False, "freeze_resnet_weights": False,
    "freeze_encoder_embedding": False, "freeze_decoder_embedding": False,
    "add_type_embedding": True, "interpolate_position": False, "resnet_model_path": None,
    "code_image_size": 128, "patch_layernorm_embedding": True, "code_layernorm_embedding": True,
    "entangle_position_embedding": False, "disable_entangle": False, "sync_bn": False,
    "scale_attn": False, "scale_fc": False, "scale_heads": False, "scale_resids": False,
    "pooler_dropout": 0.0, "pooler_classifier": "mlp", "pooler_activation_fn": "tanh",
    "spectral_norm_classification_head": False,
    "orig_patch_image_size": 256,
}


def _setdefault(args, name, value):
    if getattr(args, name, None) is None:
        setattr(args, name, value)


def ofa_defaults(args, embed_dim=1024, encoder_layers=12, decoder_layers=12, heads=16, resnet="resnet152"):
    """Fill every model argument not given explicitly (the reference's `ofa_large_architecture`)."""
    _setdefault(args, "encoder_embed_dim", embed_dim)
    _setdefault(args, "encoder_ffn_embed_dim", 4 * args.encoder_embed_dim)
    _setdefault(args, "encoder_layers", encoder_layers)
    _setdefault(args, "encoder_attention_heads", heads)
    _setdefault(args, "decoder_embed_dim", args.encoder_embed_dim)
    _setdefault(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    _setdefault(args, "decoder_layers", decoder_layers)
    _setdefault(args, "decoder_attention_heads", heads)
    _setdefault(args, "resnet_type", resnet)
    for name, value in _DEFAULTS.items():
        _setdefault(args, name, value)
    _setdefault(args, "decoder_output_dim", args.decoder_embed_dim)
    _setdefault(args, "decoder_input_dim", args.decoder_embed_dim)
    _setdefault(args, "encoder_prompt_dim", 2 * args.encoder_embed_dim)
    _setdefault(args, "decoder_prompt_dim", 2 * args.encoder_embed_dim)


def _register(arch: str, sizes):
    def preset(args):
        ofa_defaults(args, *sizes)
    preset.__name__ = f"{arch}_architecture"
    preset.__doc__ = f"{arch}: embed dim {sizes[0]}, {sizes[1]}+{sizes[2]} layers, {sizes[3]} heads, {sizes[4]}."
    register_model_architecture("ofa", arch)(preset)
    return preset


ARCHITECTURES = {arch: _register(arch, sizes) for arch, sizes in _SIZES.items()}
register_model_architecture("ofa", "ofa")(ofa_defaults)
