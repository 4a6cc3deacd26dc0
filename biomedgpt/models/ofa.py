"""The `ofa` model (BiomedGPT / OFA): encoder + decoder with shared embeddings, freezing and tuning options,
classification heads, and loading of released or older checkpoints (`upgrade_state_dict_named`).
"""
import logging
import re
from typing import Optional

import torch
from torch import Tensor, nn

from fairseq.models import FairseqEncoderDecoderModel, register_model
from fairseq.modules.checkpoint_activations import checkpoint_wrapper

from ..compat import CheckpointMismatchError
from .arguments import add_model_args
from .decoder import OFADecoder
from .embedding import embedding_table
from .encoder import OFAEncoder
from .heads import OFAClassificationHead

logger = logging.getLogger(__name__)

TIED_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
# Tensors every OFA checkpoint has (legacy names are converted before this is checked): when one of them is missing,
# the checkpoint is of another architecture, and filling it from the fresh model would silently give random weights.
CORE_KEY = re.compile(r"(encoder|decoder)\.layers\.\d+\.((self_attn|encoder_attn)\.(q|k|v|out)_proj|fc1|fc2)\.weight$"
                      r"|encoder\.embed_tokens\.weight$")
# A token-embedding row count this far from the dictionary's is another vocabulary (--bpe-dir, --code-dict-size,
# --num-bins), not a few symbols added at the end (which the reference resizes for).
VOCABULARY_CHANGE = 0.01
FIX_ARCHITECTURE = ("build the model as the checkpoint was trained (its --arch and size flags; fairseq-generate, "
                    "fairseq-validate and biomedgpt.inference.load take them from the checkpoint, so drop "
                    "--model-overrides that change them)")


def _layers(keys, stack: str) -> int:
    found = {int(m.group(1)) for m in (re.match(rf"{stack}\.layers\.(\d+)\.", k) for k in keys) if m}
    return max(found) + 1 if found else 0


def _dim(state, key: str, axis: int):
    return tuple(state[key].shape)[axis] if key in state and state[key].dim() > axis else None


def describe_mismatch(model_state, checkpoint_state) -> str:
    """One line: how a checkpoint's tensors differ from a model's (layer counts, widths, backbone, examples)."""
    parts = []
    for stack in ("encoder", "decoder"):
        ours, theirs = _layers(model_state, stack), _layers(checkpoint_state, stack)
        if ours != theirs:
            parts.append(f"{theirs} {stack} layers in the checkpoint, {ours} in the model (--{stack}-layers)")
    for what, key, axis, flag in (("embedding dim", "encoder.embed_tokens.weight", 1, "--encoder-embed-dim"),
                                  ("encoder FFN dim", "encoder.layers.0.fc1.weight", 0, "--encoder-ffn-embed-dim"),
                                  ("decoder FFN dim", "decoder.layers.0.fc1.weight", 0, "--decoder-ffn-embed-dim")):
        ours, theirs = _dim(model_state, key, axis), _dim(checkpoint_state, key, axis)
        if None not in (ours, theirs) and ours != theirs:
            parts.append(f"{what} {theirs} in the checkpoint, {ours} in the model ({flag})")
    backbone = [{k for k in state if k.startswith("encoder.embed_images.")}
                for state in (model_state, checkpoint_state)]
    if backbone[0] != backbone[1]:
        parts.append("another ResNet image backbone (--resnet-type)")
    shapes = [k for k in model_state if k in checkpoint_state and model_state[k].shape != checkpoint_state[k].shape]
    unexpected = [k for k in checkpoint_state if k not in model_state]
    missing = [k for k in model_state if k not in checkpoint_state]
    for count, what, keys in ((len(shapes), "tensors of another shape", shapes),
                              (len(unexpected), "tensors the model does not have", unexpected),
                              (len(missing), "model tensors missing", missing)):
        if count:
            key = keys[0]
            detail = (f"{key}: {tuple(checkpoint_state[key].shape)} in the checkpoint, {tuple(model_state[key].shape)}"
                      f" in the model" if keys is shapes else key)
            parts.append(f"{count} {what} (e.g. {detail})")
    return "; ".join(parts) or "the tensors do not match"


def _check_args(args) -> None:
    if args.adaptive_softmax_cutoff is not None:
        raise ValueError("--adaptive-softmax-cutoff is not supported by the ofa model (released checkpoints use a "
                         "tied full softmax)")
    if args.encoder_layers_to_keep or args.decoder_layers_to_keep:
        raise ValueError("--encoder/decoder-layers-to-keep (LayerDrop pruning) is not supported by the ofa model")
    if args.encoder_embed_dim != args.decoder_embed_dim and args.share_all_embeddings:
        raise ValueError("--share-all-embeddings requires --encoder-embed-dim to match --decoder-embed-dim")


def init_bert_weights(module: nn.Module) -> None:
    """BERT-style init of every Linear and Embedding: N(0, 0.02), zero biases and padding rows.

    Same rule as fairseq's `init_bert_params`, written with `nn.init` so it also works on the meta device.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


def _apply_bitfit(model: nn.Module) -> None:
    """BitFit: only biases of layer norms and FFN linears stay trainable (the reference rule on names)."""
    for name, param in model.named_parameters():
        param.requires_grad = ("layer_norm" in name and "bias" in name) or ("fc" in name and "bias" in name)


@register_model("ofa")
class OFAModel(FairseqEncoderDecoderModel):
    """BiomedGPT/OFA encoder-decoder. Build it through fairseq (`--arch ofa_tiny` ... `ofa_huge`)."""

    def __init__(self, args, encoder: OFAEncoder, decoder: OFADecoder):
        super().__init__(encoder, decoder)
        self.args = args
        self.apply(init_bert_weights)
        self.classification_heads = nn.ModuleDict()
        self.eos = encoder.dictionary.eos()
        self.ans_tensor_list = None

    @staticmethod
    def add_args(parser):
        add_model_args(parser)

    @classmethod
    def build_model(cls, args, task):
        from .architectures import ofa_defaults

        ofa_defaults(args)
        _check_args(args)
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if args.share_all_embeddings and src_dict != tgt_dict:
            raise ValueError("--share-all-embeddings requires a joined dictionary")
        if args.offload_activations:
            args.checkpoint_activations = True
        encoder_embed = cls.build_embedding(args, src_dict, args.encoder_embed_dim, args.encoder_embed_path)
        if args.share_all_embeddings:
            args.share_decoder_input_output_embed = True
            decoder_embed = encoder_embed
        else:
            decoder_embed = cls.build_embedding(args, tgt_dict, args.decoder_embed_dim, args.decoder_embed_path)
        tuning = args.encoder_prompt or args.decoder_prompt or args.adapter
        if args.freeze_encoder_embedding or tuning:
            encoder_embed.weight.requires_grad = False
        if args.freeze_decoder_embedding or tuning:
            decoder_embed.weight.requires_grad = False

        encoder = OFAEncoder(args, src_dict, encoder_embed)
        decoder = OFADecoder(args, tgt_dict, decoder_embed)
        if args.checkpoint_activations:
            for stack in (encoder, decoder):
                stack.layers = nn.ModuleList(
                    [checkpoint_wrapper(layer, offload_to_cpu=args.offload_activations) for layer in stack.layers])
        if args.encoder_prompt or args.decoder_prompt:
            encoder.requires_grad_(False)
            decoder.requires_grad_(False)
            for prompt in (encoder.encoder_prompt_encoder, decoder.decoder_prompt_encoder):
                if prompt is not None:
                    prompt.requires_grad_(True)
            if args.adapter:
                for layer in list(encoder.layers) + list(decoder.layers):
                    layer.adapter.requires_grad_(True)
        model = cls(args, encoder, decoder)
        if args.bitfit:
            _apply_bitfit(model)
        return model

    @classmethod
    def build_embedding(cls, args, dictionary, embed_dim: int, path: Optional[str] = None) -> nn.Embedding:
        table = embedding_table(len(dictionary), embed_dim, dictionary.pad())
        if path:
            from fairseq import utils
            utils.load_embedding(utils.parse_embedding(path), dictionary, table)
        return table

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Tensor,
        prev_output_tokens: Tensor,
        patch_images: Optional[Tensor] = None,
        patch_images_2: Optional[Tensor] = None,
        patch_masks: Optional[Tensor] = None,
        code_masks: Optional[Tensor] = None,
        sample_patch_num: Optional[int] = None,
        features_only: bool = False,
        classification_head_name: Optional[str] = None,
        token_embeddings: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        if classification_head_name is not None:
            features_only = True
        encoder_out = self.encoder(
            src_tokens, src_lengths=src_lengths, patch_images=patch_images, patch_images_2=patch_images_2,
            patch_masks=patch_masks, token_embeddings=token_embeddings, return_all_hiddens=return_all_hiddens,
            sample_patch_num=sample_patch_num)
        x, extra = self.decoder(
            prev_output_tokens, code_masks=code_masks, encoder_out=encoder_out, features_only=features_only,
            alignment_layer=alignment_layer, alignment_heads=alignment_heads, src_lengths=src_lengths,
            return_all_hiddens=return_all_hiddens)
        if classification_head_name is not None:
            last = prev_output_tokens.ne(self.encoder.padding_idx).sum(1) - 1  # last non-pad position
            sentence = x[torch.arange(x.size(0), device=x.device), last]
            x = self.classification_heads[classification_head_name](sentence)
        return x, extra

    # ------------------------------------------------------------------ heads and answer tokens
    def register_classification_head(self, name: str, num_classes: int = None, inner_dim: int = None,
                                     use_two_images: bool = False, **kwargs):
        """Add (or replace) a classification head reading the decoder feature at the last non-pad position."""
        if name in self.classification_heads and self.classification_heads[name].shape != (num_classes, inner_dim):
            logger.warning(f're-registering head "{name}" with (num_classes, inner_dim) = ({num_classes}, {inner_dim}) '
                           f"(previously {self.classification_heads[name].shape})")
        dim = self.args.encoder_embed_dim
        self.classification_heads[name] = OFAClassificationHead(
            input_dim=dim, inner_dim=inner_dim or dim, num_classes=num_classes,
            activation_fn=self.args.pooler_activation_fn, pooler_dropout=self.args.pooler_dropout,
            pooler_classifier=self.args.pooler_classifier, use_two_images=use_two_images,
            do_spectral_norm=self.args.spectral_norm_classification_head)

    def register_embedding_tokens(self, ans2label_dict, src_dict, bpe) -> None:
        """Remember the BPE ids of `<ans_...>` symbols at the end of the dictionary.

        When a checkpoint has fewer embedding rows than the dictionary, the new rows are initialised as the
        mean embedding of each answer's BPE tokens.
        """
        self.ans_tensor_list = []
        for i in range(len(ans2label_dict)):
            answer = src_dict[-len(ans2label_dict) + i][5:-1]
            ids = src_dict.encode_line(bpe.encode(" " + answer), add_if_not_exist=False, append_eos=False)
            self.ans_tensor_list.append(ids.long())

    # ------------------------------------------------------------------ checkpoint upgrades
    def upgrade_state_dict_named(self, state_dict, name: str):
        """Bring an older or differently sized checkpoint to this model's key set (REFERENCE §9)."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        self._upgrade_heads(state_dict, prefix)
        self._resize_token_embeddings(state_dict, prefix)
        for stack in ("encoder", "decoder"):
            self._extend_image_positions(state_dict, f"{prefix}{stack}.embed_image_positions.weight")
        if f"{prefix}decoder.output_projection.weight" not in state_dict:
            for legacy in ("decoder.embed_out", "decoder.embed_tokens.weight"):
                if f"{prefix}{legacy}" in state_dict:
                    state_dict[f"{prefix}decoder.output_projection.weight"] = state_dict[f"{prefix}{legacy}"]
                    break
        current = self.state_dict()
        state_dict[f"{prefix}decoder.image_position_idx"] = current["decoder.image_position_idx"]
        missing = [key for key in current if f"{prefix}{key}" not in state_dict
                   and not key.startswith("classification_heads.")]
        if any(CORE_KEY.match(key) for key in missing):
            ours = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            detail = describe_mismatch(current, ours)
            raise CheckpointMismatchError(f"the checkpoint does not fit this model: {detail}; {FIX_ARCHITECTURE}")
        if missing:
            logger.warning(f"the checkpoint lacks {len(missing)} tensors of this model, which keep their initial "
                           f"values (e.g. {missing[0]}); expected for options added after its training (attention "
                           f"layer norms, relative position tables, prompts, adapters)")
        for key in missing:
            state_dict[f"{prefix}{key}"] = current[key]

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's loading (upgrade, then torch); a checkpoint of another shape raises CheckpointMismatchError
        with one line saying what differs instead of torch's list of every tensor."""
        try:
            return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        except RuntimeError as exc:
            if "Error(s) in loading state_dict" not in str(exc):
                raise
            detail = describe_mismatch(self.state_dict(), state_dict)
        raise CheckpointMismatchError(f"the checkpoint does not fit this model: {detail}; {FIX_ARCHITECTURE}")

    def _upgrade_heads(self, state_dict, prefix: str) -> None:
        """Keep checkpoint heads that match registered ones; drop others; add missing registered heads."""
        head_prefix = f"{prefix}classification_heads."
        names = {k[len(head_prefix):].split(".")[0] for k in state_dict if k.startswith(head_prefix)}
        load_heads = getattr(self.args, "load_checkpoint_heads", False)
        for head in names:
            keys = [k for k in state_dict if k.startswith(f"{head_prefix}{head}.")]
            num_classes = state_dict[f"{head_prefix}{head}.out_proj.weight"].size(0)
            dense = state_dict.get(f"{head_prefix}{head}.dense.weight")
            inner_dim = dense.size(0) if dense is not None else None
            if load_heads:
                if head not in self.classification_heads:
                    self.register_classification_head(head, num_classes, inner_dim)
                continue
            existing = self.classification_heads[head] if head in self.classification_heads else None
            if existing is None or existing.shape != (num_classes, inner_dim):
                logger.warning(f"deleting classification head ({head}) from checkpoint: not registered or "
                               f"of a different size")
                for key in keys:
                    del state_dict[key]
        for key, value in self.classification_heads.state_dict().items():
            state_dict.setdefault(f"{head_prefix}{key}", value)

    def _resize_token_embeddings(self, state_dict, prefix: str) -> None:
        """Match the checkpoint's token embedding rows to the current dictionary (grown or shrunk)."""
        keys = [f"{prefix}{k}" for k in TIED_EMBEDDINGS if f"{prefix}{k}" in state_dict]
        if not keys:
            return
        dictionary = self.encoder.dictionary
        loaded = state_dict[keys[0]].size(0)
        wanted = len(dictionary)
        if loaded == wanted:
            return
        added = len(self.ans_tensor_list) if self.ans_tensor_list is not None else None
        if added != wanted - loaded and abs(wanted - loaded) > max(8, VOCABULARY_CHANGE * wanted):
            raise CheckpointMismatchError(
                f"the checkpoint has {loaded} token embeddings but this model's dictionary has {wanted} symbols: it "
                f"was trained with another vocabulary; use the --bpe-dir (and --code-dict-size / --num-bins) it was "
                f"trained with")
        if loaded > wanted:
            logger.warning(f"checkpoint has {loaded} token embeddings, the dictionary {wanted}: dropping the last "
                           f"{loaded - wanted} rows")
            for key in keys:
                state_dict[key] = state_dict[key][:wanted]
            return
        logger.info(f"dictionary grew from {loaded} to {wanted} symbols: adding embedding rows")
        weight = state_dict[keys[0]]
        dim = weight.size(1)
        if self.ans_tensor_list is not None and len(self.ans_tensor_list) == wanted - loaded:
            extra = torch.stack([weight[ids].float().mean(0) for ids in self.ans_tensor_list])
        else:
            extra = torch.zeros(wanted - loaded, dim)
            nn.init.normal_(extra, mean=0, std=dim ** -0.5)
        extra = extra.to(weight.dtype)
        for key in keys:
            state_dict[key] = torch.cat([state_dict[key], extra])

    def _extend_image_positions(self, state_dict, key: str) -> None:
        """Append N(0, D^-0.5) rows when this model has a larger `--image-bucket-size` than the checkpoint."""
        if key not in state_dict:
            return
        weight = state_dict[key]
        wanted = self.encoder.embed_image_positions.weight.size(0)
        if weight.size(0) < wanted:
            extra = torch.zeros(wanted - weight.size(0), weight.size(1))
            nn.init.normal_(extra, mean=0, std=weight.size(1) ** -0.5)
            state_dict[key] = torch.cat([weight, extra.to(weight.dtype)])
