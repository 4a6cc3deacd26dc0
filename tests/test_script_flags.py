"""Every fine-tuning flag of BiomedGPT's shell scripts (REFERENCE §7) is accepted by fairseq-train's parser
with the plugin, and lands in the config where the task, model, criterion and scheduler read it."""
import pytest

COMMON = [
    "--bpe-dir", "BPE", "--fp16", "--fp16-scale-window", "512", "--num-workers", "0",
    "--restore-file", "ckpt.pt", "--reset-optimizer", "--reset-dataloader", "--reset-meters",
    "--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed",
    "--share-all-embeddings", "--layernorm-embedding", "--patch-layernorm-embedding", "--code-layernorm-embedding",
    "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle",
    "--resnet-drop-path-rate", "0.0", "--encoder-drop-path-rate", "0.1", "--decoder-drop-path-rate", "0.1",
    "--dropout", "0.1", "--attention-dropout", "0.0", "--weight-decay", "0.01", "--optimizer", "adam",
    "--adam-betas", "(0.9,0.999)", "--adam-eps", "1e-08", "--clip-norm", "1.0",
    "--lr-scheduler", "polynomial_decay_ratio", "--warmup-ratio", "0.06", "--max-epoch", "100",
    "--num-bins", "1000", "--fixed-validation-seed", "7", "--log-format", "simple", "--log-interval", "10",
    "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--batch-size", "16", "--update-freq", "4", "--arch", "ofa_tiny",
]

SCRIPTS = {
    "caption": ["--selected-cols", "0,4,2", "--lr", "1e-5", "--max-src-length", "80", "--max-tgt-length", "20",
                "--patch-image-size", "480", "--eval-cider", "--eval-cider-cached-tokens", "words.p",
                "--eval-args", '{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}',
                "--best-checkpoint-metric", "cider", "--maximize-best-checkpoint-metric",
                "--drop-worst-ratio", "0.2", "--drop-worst-after", "600", "--save-interval", "1",
                "--validate-interval", "1", "--save-interval-updates", "500", "--validate-interval-updates", "500",
                "--no-epoch-checkpoints", "--keep-best-checkpoints", "1", "--freeze-encoder-embedding",
                "--freeze-decoder-embedding", "--find-unused-parameters"],
    "vqa_gen": ["--selected-cols", "0,5,2,3,4", "--ans2label-file", "ans2label.pkl", "--lr", "5e-5",
                "--max-src-length", "80", "--max-object-length", "30", "--max-tgt-length", "40",
                "--patch-image-size", "256", "--prompt-type", "prev_output", "--add-object", "--uses-ema",
                "--store-ema", "--ema-fp32", "--ema-decay", "0.9999", "--ema-start-update", "0",
                "--val-inference-type", "beamsearch", "--best-checkpoint-metric", "vqa_score",
                "--maximize-best-checkpoint-metric", "--keep-last-epochs", "1", "--freeze-encoder-embedding",
                "--freeze-decoder-embedding"],
    "image_classify": ["--selected-cols", "0,2", "--ans2label-file", "blood_class2label.pkl", "--lr", "5e-5",
                       "--patch-image-size", "384", "--max-src-length", "128", "--max-tgt-length", "64",
                       "--imagenet-default-mean-and-std", "--valid-batch-size", "20", "--batch-size-valid", "20",
                       "--best-checkpoint-metric", "score", "--maximize-best-checkpoint-metric",
                       "--keep-last-epochs", "1"],
    "mnli": ["--selected-cols", "0,1,2", "--lr", "7e-5", "--max-src-length", "512", "--max-tgt-length", "30",
             "--prompt-type", "src", "--best-checkpoint-metric", "acc", "--maximize-best-checkpoint-metric",
             "--keep-best-checkpoints", "1", "--fp16-init-scale", "16"],
    "gigaword": ["--selected-cols", "0,1", "--lr", "1e-3", "--max-src-length", "512", "--max-tgt-length", "128",
                 "--noise-ratio", "0.2", "--eval-rouge", "--eval-print-samples",
                 "--eval-args", '{"beam":10,"lenpen":0.7,"max_len_b":256,"no_repeat_ngram_size":3}',
                 "--best-checkpoint-metric", "rougeL_f1", "--maximize-best-checkpoint-metric",
                 "--save-interval-updates", "2500", "--validate-interval-updates", "2500", "--no-epoch-checkpoints"],
}


@pytest.mark.parametrize("task", list(SCRIPTS))
def test_script_flags_parse_into_the_config(task):
    import biomedgpt  # noqa: F401
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = ["a.tsv,b.tsv", "--task", task, *COMMON, *SCRIPTS[task]]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.task._name == task and cfg.task.data == "a.tsv,b.tsv"
    assert cfg.task.selected_cols == SCRIPTS[task][SCRIPTS[task].index("--selected-cols") + 1]
    assert cfg.criterion._name == "adjust_label_smoothed_cross_entropy" and cfg.criterion.label_smoothing == 0.1
    assert cfg.lr_scheduler._name == "polynomial_decay_ratio" and cfg.lr_scheduler.warmup_ratio == 0.06
    assert cfg.model.scale_heads and cfg.model.disable_entangle and cfg.model.encoder_drop_path_rate == 0.1
    assert not cfg.common.tpu  # --fp16/--bf16 do not switch on TPU mode
    if task == "vqa_gen":
        assert cfg.task.uses_ema and cfg.ema.store_ema and cfg.task.prompt_type == "prev_output"
        assert cfg.task.val_inference_type == "beamsearch" and cfg.task.add_object
    if task == "caption":
        assert cfg.criterion.drop_worst_ratio == 0.2 and cfg.criterion.drop_worst_after == 600
        assert cfg.model.freeze_encoder_embedding and cfg.task.eval_cider
    if task == "gigaword":
        assert cfg.task.noise_ratio == 0.2 and cfg.task.eval_rouge
