"""Training on a tiny random Llama with SmolLM2's real tokenizer: loss, masking, resume, bad params."""

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from ecommerce_slm.params import ParamError
from stages.train import AUTO_STEPS, TrainConfig, to_prompt_completion, train

ROWS = [
    {"text": f"please add {n} {item}", "action": "add", "product": product, "quantity": n}
    for n in range(1, 9)
    for item, product in (("shampoos", "Shampoo"), ("lip balms", "Lip Balm"))
] + [
    {"text": f"remove {n} {item}", "action": "remove", "product": product, "quantity": n}
    for n in range(1, 9)
    for item, product in (("socks", "Socks"), ("umbrellas", "Umbrella"))
]


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def tiny_cfg(**overrides):
    values = dict(
        quantization="none",
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        max_steps=12,
        batch_size=8,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        save_steps=5,
        eval_steps=100,
        logging_steps=1,
        max_length=128,
        threads=2,
        loraplus_lr_ratio=1.0,  # trl's own trainer; the LoRA+ tests ask for theirs
        compile_layers=False,  # ~20 s of compiling per run; the compile tests ask for it
    )
    return TrainConfig(**{**values, **overrides})


def run(tiny_model_dir, train_file, tmp_path, cfg, callbacks=()):
    return train(
        cfg,
        base_dir=tiny_model_dir,
        train_file=train_file,
        validation_file=None,
        adapter_dir=tmp_path / "adapter",
        checkpoint_dir=tmp_path / "ckpt",
        live_dir=tmp_path / "live",
        callbacks=callbacks,
    )


class LossRecorder(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_a_few_steps_give_finite_falling_loss(tiny_model_dir, train_file, tmp_path, quantization):
    import trl.trainer.utils as trl_utils

    shipped = trl_utils._use_triton
    recorder = LossRecorder()
    summary = run(tiny_model_dir, train_file, tmp_path, tiny_cfg(quantization=quantization), [recorder])
    assert trl_utils._use_triton is shipped  # the private switch is patched only while training
    losses = recorder.losses
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # the same training saves the same file, whatever order this process's string hashing gives peft's set
    assert saved["target_modules"] == sorted(saved["target_modules"]) and len(saved["target_modules"]) == 7
    assert summary["steps"] == 12 and summary["trainable_parameters"] > 0
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert {"loss", "learning_rate", "token_accuracy"} <= set(live)


def test_loss_covers_only_the_completion(tiny_model_dir, train_file, tmp_path, real_tokenizer):
    """The prompt's labels are -100: only the JSON answer (and its end-of-turn token) is learned."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from stages.train import lora_config, sft_config

    cfg = tiny_cfg()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, tmp_path / "out", has_eval=False),
        train_dataset=to_prompt_completion(ROWS[:4]),
        processing_class=real_tokenizer,
        peft_config=lora_config(cfg, model.config.num_hidden_layers),
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for i, row in enumerate(ROWS[:4]):
        labels = batch["labels"][i]
        learned = real_tokenizer.decode(labels[labels != -100])
        expected = json.dumps({"action": row["action"], "product": row["product"], "quantity": row["quantity"]})
        assert learned.startswith(expected)
        assert learned[len(expected) :].strip() in ("<|im_end|>", "")
        prompt_len = int((labels == -100).sum())
        assert prompt_len > 10  # system + user turns are masked
        assert row["text"] not in learned


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt  # what a killed run looks like to the trainer


def test_interrupted_run_resumes_from_its_checkpoint(tiny_model_dir, train_file, tmp_path, capsys):
    cfg = tiny_cfg(max_steps=10, save_steps=5)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, train_file, tmp_path, cfg, [StopAt(7)])
    assert (tmp_path / "ckpt" / "checkpoint-5").exists()
    assert not (tmp_path / "adapter").exists()  # no half-written adapter
    summary = run(tiny_model_dir, train_file, tmp_path, cfg)
    assert "resuming from" in capsys.readouterr().out
    assert summary["resumed"] and summary["steps"] == 10 and summary["steps_this_run"] == 5
    # changed params: start over, and say so
    summary = run(tiny_model_dir, train_file, tmp_path, tiny_cfg(max_steps=10, save_steps=5, learning_rate=1e-3))
    assert "starting over" in capsys.readouterr().out
    assert not summary["resumed"] and summary["steps_this_run"] == 10


def test_a_finished_run_trains_again_instead_of_resuming_past_its_end(tiny_model_dir, train_file, tmp_path, capsys):
    """`dvc repro -f train` finds the last checkpoint of the same run: transformers, resumed from it, trained
    one step past max_steps when the run spans epochs (13 steps of 8 from 32 rows here; 500 -> 501 on
    the real data). The run starts over and ends where the first one did."""
    cfg = tiny_cfg(max_steps=13, save_steps=13)
    first = run(tiny_model_dir, train_file, tmp_path, cfg)
    assert first["steps"] == 13 and (tmp_path / "ckpt" / "checkpoint-13").exists()
    again = run(tiny_model_dir, train_file, tmp_path, cfg)
    assert "ends a finished run of the same params, data and base: starting over" in capsys.readouterr().out
    assert not again["resumed"] and again["steps"] == again["steps_this_run"] == 13


def test_unknown_target_module(tiny_model_dir, train_file, tmp_path):
    with pytest.raises(ParamError, match=r"train.target_modules: \['qkv_proj'\] not in the model"):
        run(tiny_model_dir, train_file, tmp_path, tiny_cfg(target_modules=["q_proj", "qkv_proj"]))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lora_r": 0}, "train.lora_r: expected a positive integer"),
        ({"quantization": "int3"}, "train.quantization: expected nf4 or none"),
        ({"learning_rate": 0}, "train.learning_rate: expected auto or a number in (0, 1)"),
        ({"launcher": "slurm"}, "train.launcher: expected python or accelerate"),
        ({"attention": "flash_attention_2"}, "train.attention: expected auto, eager or sdpa"),
        ({"compile_layers": 1}, "train.compile_layers: expected auto, true or false"),
        ({"compile_layers": "yes"}, "train.compile_layers: expected auto, true or false"),
        ({"lora_top_layers": -1}, "train.lora_top_layers: expected an integer >= 0 (0: every layer)"),
        ({"loraplus_lr_ratio": 0.5}, "train.loraplus_lr_ratio: expected a number >= 1 (1: plain LoRA)"),
        ({"method": "full"}, "train.loraplus_lr_ratio: expected 1 with method full"),  # the LoRA+ default
        ({"lora_init": "kaiming"}, "train.lora_init: expected default, pissa, olora"),
        (
            {"method": "full", "loraplus_lr_ratio": 1, "lora_init": "pissa"},
            "train.lora_init: expected default with method full",
        ),
        (
            {"method": "full", "lora_top_layers": 12, "loraplus_lr_ratio": 1},
            "train.lora_top_layers: expected 0 with method full",
        ),
    ],
)
def test_bad_train_params(values, message):
    with pytest.raises(ParamError) as err:
        TrainConfig.from_dict(values)
    assert message in str(err.value)


def test_missing_data_file(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing training data"):
        run(tiny_model_dir, tmp_path / "none.jsonl", tmp_path, tiny_cfg())


def test_scoring_only_the_completion_keeps_loss_and_gradients(tiny_model_dir, real_tokenizer, monkeypatch):
    """On CPU trl projects every position through the vocabulary; ours keeps the labelled ones. Same numbers."""
    import trl.kernels.chunked_logprob as kernels
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from stages.train import completion_tokens_only_scoring

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs",))
    batch = real_tokenizer(
        ['please add 3 shampoos {"action": "add"}', 'remove 2 socks {"action": "remove", "quantity": 2}'],
        return_tensors="pt",
        padding=True,
    )
    labels = batch["input_ids"].clone()
    labels[:, :6] = -100  # the "prompt"
    labels[batch["attention_mask"] == 0] = -100
    scored_rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction,
        "apply",
        lambda hidden, *rest: scored_rows.append(hidden.shape[0]) or apply(hidden, *rest),
    )

    def loss_and_grad():
        model.zero_grad()
        loss = model(**batch, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.item(), model.model.layers[0].mlp.down_proj.weight.grad.clone()

    assert trl_utils._use_triton is kernels._use_triton  # trl as shipped: train() restores it
    full_loss, full_grad = loss_and_grad()
    with completion_tokens_only_scoring():
        compact_loss, compact_grad = loss_and_grad()
    assert trl_utils._use_triton is kernels._use_triton  # restored on leaving
    shifted = labels[:, 1:]
    assert scored_rows == [shifted.numel(), int((shifted != -100).sum())]
    assert compact_loss == pytest.approx(full_loss, rel=1e-5)
    torch.testing.assert_close(compact_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_train_step_bench_times_each_step(tiny_model_dir, train_file):
    from tools.train_step_bench import parse_variant, step_time_summary, step_times

    name, cfg = parse_variant(
        "drop=lora_dropout=0.1,target_modules=[q_proj,v_proj],quantization=none,double_quant=false", tiny_cfg()
    )
    assert (name, cfg.lora_dropout, cfg.target_modules, cfg.quantization, cfg.double_quant) == (
        "drop",
        0.1,
        ["q_proj", "v_proj"],
        "none",
        False,
    )
    assert parse_variant("default", tiny_cfg())[1] == tiny_cfg()
    with pytest.raises(ParamError, match=r"--variant x: train.lora_rank: unknown key"):
        parse_variant("x=lora_rank=8", tiny_cfg())
    with pytest.raises(ParamError, match="train.lora_r: expected an integer, got 0.5"):
        parse_variant("x=lora_r=0.5", tiny_cfg())
    with pytest.raises(ParamError, match="train.lora_r: expected a positive integer, got 0"):
        parse_variant("x=lora_r=0", tiny_cfg())
    with pytest.raises(ParamError, match="expected name=key=value"):
        parse_variant("x=lora_r", tiny_cfg())
    times = step_times(cfg, 4, base_dir=tiny_model_dir, train_file=train_file)
    assert len(times) == 4 and all(t > 0 for t in times)
    summary = step_time_summary([9.0, 5.0, 1.0, 3.0, 2.0])
    assert summary == {
        "median_seconds_per_step": 2.0,
        "min": 1.0,
        "max": 3.0,
        "steps_timed": 3,
        "first_step_seconds": 9.0,
    }


@pytest.mark.parametrize(
    "name, flags, expected",
    [
        ("auto", ["avx2", "fma"], "float32"),  # a laptop: bf16 would be emulated, 10x slower
        ("auto", ["avx2", "avx512f", "avx512_bf16"], "bfloat16"),
        ("auto", ["avx2", "amx_bf16"], "bfloat16"),
        ("float16", ["avx2"], "float16"),  # an explicit choice is kept
    ],
)
def test_compute_dtype_auto_follows_the_cpu(name, flags, expected):
    from stages.train import resolve_compute_dtype

    assert resolve_compute_dtype(name, flags) == expected


@pytest.mark.parametrize(
    "max_steps, flags, expected",
    [
        ("auto", ["avx2", "fma"], ("float32", 11)),  # an AVX2 laptop: float32 steps cost 2.7x
        ("auto", ["avx2", "avx512_bf16", "amx_bf16"], ("bfloat16", 22)),
        ("auto", ["avx2", "avx512f", "avx512_bf16"], ("bfloat16", 44)),  # AMD Zen 4: bf16 without AMX, 1.3x the step
        (300, ["avx2", "amx_bf16"], ("bfloat16", 300)),  # a number is kept
        (-1, ["avx2"], ("float32", -1)),  # so is "train for `epochs`"
    ],
)
def test_auto_steps_follow_the_machines_step_budget(max_steps, flags, expected):
    from stages.train import resolve

    steps = {"float32": 11, "bfloat16": 22, "bfloat16_avx512": 44, "float16": 33}
    cfg = resolve(TrainConfig(max_steps=max_steps, auto_steps=steps), flags)
    assert (cfg.compute_dtype, cfg.max_steps) == expected


@pytest.mark.parametrize(
    "dtype, flags, expected",
    [
        ("float32", ["avx2", "avx512_bf16", "amx_bf16"], "float32"),  # a forced dtype takes its own budget
        ("bfloat16", ["avx2", "avx512_bf16", "amx_bf16"], "bfloat16"),
        ("bfloat16", ["avx2", "avx512_bf16"], "bfloat16_avx512"),
        ("float16", ["avx2"], "float16"),
    ],
)
def test_step_budget_tells_amx_from_avx512_bf16(dtype, flags, expected):
    from stages.train import step_budget

    assert step_budget(dtype, flags) == expected


@pytest.mark.parametrize(
    "value, dtype, quantization, on_gpu, has_compiler, expected",
    [
        ("auto", "bfloat16", "none", False, True, True),  # measured: 1.1 -> 0.8 s a step on AMX
        ("auto", "bfloat16", "none", False, False, False),  # inductor cannot build CPU kernels: eager
        ("auto", "float32", "none", False, True, False),  # an AVX2 laptop: not measured, left as it was
        ("auto", "bfloat16", "nf4", False, True, False),  # bitsandbytes' 4-bit layers
        ("auto", "bfloat16", "none", True, True, False),
        (True, "float32", "none", False, True, True),  # an explicit choice is kept
        (False, "bfloat16", "none", False, False, False),
    ],
)
def test_compile_layers_auto_follows_dtype_device_and_quantization(
    value, dtype, quantization, on_gpu, has_compiler, expected
):
    from stages.train import resolve_compile_layers

    assert resolve_compile_layers(value, dtype, quantization, on_gpu, has_compiler) is expected


def test_compiled_layers_train_like_eager_ones_and_decode_eagerly_after(tiny_model_dir, train_file, tmp_path):
    """The same run compiled and not: the same losses (up to kernel rounding), every decoder layer compiled
    at each step of the compiled run and none in the other; the adapter saves under its usual names.
    (That the layers run eagerly after the block: the test below.)"""
    from transformers import TrainerCallback

    compiled_during = []

    class Look(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            layers = model.base_model.model.model.layers
            compiled_during.append([layer._compiled_call_impl is not None for layer in layers])

    losses = {}
    for compiled in (False, True):
        recorder = LossRecorder()
        cfg = tiny_cfg(max_steps=4, compute_dtype="float32", compile_layers=compiled)
        summary = run(tiny_model_dir, train_file, tmp_path / str(compiled), cfg, [recorder, Look()])
        losses[compiled] = recorder.losses
        assert summary["compile_layers"] is compiled
    assert compiled_during[:4] == [[False, False]] * 4 and compiled_during[4:] == [[True, True]] * 4
    assert len(losses[True]) == 4 and losses[True] == pytest.approx(losses[False], rel=1e-3)
    from peft import AutoPeftModelForCausalLM

    adapter = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "True" / "adapter")
    assert not any(name.startswith("_orig_mod") or "._orig_mod." in name for name, _ in adapter.named_parameters())


def test_layers_run_eagerly_while_decoding_and_after_the_compiled_block_even_when_it_fails(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from stages.train import compiled_decoder_layers, decoder_layers, eager_decoder_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = decoder_layers(model)
    assert layers == list(model.model.layers) and len(layers) == 2
    with pytest.raises(KeyboardInterrupt), compiled_decoder_layers(model, enabled=True):
        assert all(layer._compiled_call_impl is not None for layer in layers)
        with eager_decoder_layers(model):  # validation decoding mid-training (tools.learning_curve)
            assert all(layer._compiled_call_impl is None for layer in layers)
        assert all(layer._compiled_call_impl is not None for layer in layers)
        raise KeyboardInterrupt
    assert all(layer._compiled_call_impl is None for layer in layers)


def test_compile_layers_true_without_a_compiler_says_what_is_missing(monkeypatch):
    from stages.train import resolve

    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(ParamError, match=r"train.compile_layers: true needs a C\+\+ compiler"):
        resolve(TrainConfig(compile_layers=True), ["avx2"])
    assert resolve(TrainConfig(compile_layers="auto"), ["avx2", "amx_bf16"]).compile_layers is False


def test_neftune_alpha_reaches_the_trainer_and_zero_is_off(tmp_path):
    from stages.train import sft_config

    assert sft_config(TrainConfig(neftune_alpha=5.0, max_steps=1), tmp_path, False).neftune_noise_alpha == 5.0
    assert sft_config(TrainConfig(max_steps=1), tmp_path, False).neftune_noise_alpha is None


@pytest.mark.parametrize(
    "rate, flags, expected",
    [
        ("auto", ["avx2", "fma"], 0.02),  # float32's 250 steps want a higher rate than bf16's 650
        ("auto", ["avx2", "avx512_bf16", "amx_bf16"], 0.01),
        ("auto", ["avx2", "avx512_bf16"], 0.04),  # bf16 without AMX: its own, shorter budget
        (0.005, ["avx2", "avx512_bf16"], 0.005),  # a number is kept
    ],
)
def test_auto_learning_rate_follows_the_step_budget(rate, flags, expected):
    from stages.train import resolve

    rates = {"float32": 0.02, "bfloat16": 0.01, "bfloat16_avx512": 0.04, "float16": 0.03}
    assert resolve(TrainConfig(learning_rate=rate, auto_learning_rate=rates), flags).learning_rate == expected


@pytest.mark.parametrize(
    "name, dtype, on_gpu, expected",
    [
        ("auto", "bfloat16", False, "eager"),  # CPU flash-attention backward in bf16: 16% of a step
        ("auto", "float32", False, "sdpa"),  # a tie on a CPU in float32
        ("auto", "bfloat16", True, "sdpa"),
        ("sdpa", "bfloat16", False, "sdpa"),  # an explicit choice is kept
    ],
)
def test_attention_auto_follows_the_dtype_and_device(name, dtype, on_gpu, expected):
    from stages.train import resolve_attention

    assert resolve_attention(name, dtype, on_gpu) == expected


def test_lora_inputs_left_in_bf16_under_autocast_keep_loss_and_gradients(tiny_model_dir, real_tokenizer):
    """train() stops peft casting each LoRA input up to the adapter's float32 while autocast casts it back
    down: the same loss and LoRA gradients, bit for bit, without the two copies."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from stages.train import lora_input_casting

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    lora_b = model.base_model.model.model.layers[0].mlp.down_proj.lora_B["default"].weight
    assert lora_b.dtype == torch.float32  # peft keeps adapters in float32 on a bf16 base
    torch.nn.init.normal_(lora_b)  # B starts at zero, which would make A's gradient zero either way
    batch = real_tokenizer(["please add 3 shampoos", "remove 2 socks please"], return_tensors="pt", padding=True)

    lora_a = model.base_model.model.model.layers[0].mlp.down_proj.lora_A["default"]
    input_dtypes = []
    lora_a.register_forward_pre_hook(lambda module, args: input_dtypes.append(args[0].dtype))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]

    cast_loss, cast_grads = loss_and_grads()
    with lora_input_casting(model, enabled=False):
        kept_loss, kept_grads = loss_and_grads()
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "lora_A"))  # restored
    assert input_dtypes == [torch.float32, torch.bfloat16]  # the cast happened, then it did not
    assert kept_loss == cast_loss
    assert len(kept_grads) == 8 and any(g.abs().sum() > 0 for g in kept_grads)
    for kept, cast in zip(kept_grads, cast_grads, strict=True):
        torch.testing.assert_close(kept, cast, rtol=0, atol=0)


def test_another_dtypes_step_count_or_learning_rate_does_not_restart_a_run(tmp_path):
    from stages.train import resolve, run_id

    (tmp_path / "train.jsonl").write_text("{}\n")
    ids = {
        run_id(
            resolve(TrainConfig(auto_steps={**AUTO_STEPS, "float32": 11, "float16": f16}), ["avx2"]),
            tmp_path / "train.jsonl",
            tmp_path,
        )
        for f16 in (33, 44)
    }
    changed = resolve(TrainConfig(auto_steps={**AUTO_STEPS, "float32": 12, "float16": 33}), ["avx2"])
    assert len(ids) == 1 and run_id(changed, tmp_path / "train.jsonl", tmp_path) not in ids
    rate_ids = [
        run_id(resolve(TrainConfig(auto_learning_rate=rates), ["avx2"]), tmp_path / "train.jsonl", tmp_path)
        for rates in (
            {"float32": 2e-3, "bfloat16": 1e-3, "bfloat16_avx512": 1e-3, "float16": 1e-3},
            {"float32": 2e-3, "bfloat16": 5e-4, "bfloat16_avx512": 3e-4, "float16": 2e-3},  # others': same run
            {"float32": 3e-3, "bfloat16": 1e-3, "bfloat16_avx512": 1e-3, "float16": 1e-3},  # this one's: another run
        )
    ]
    assert rate_ids[0] == rate_ids[1] != rate_ids[2]


def test_auto_steps_are_what_a_run_trains(tiny_model_dir, train_file, tmp_path):
    from stages.train import resolve_compute_dtype, step_budget

    steps = {"float32": 2, "bfloat16": 3, "bfloat16_avx512": 5, "float16": 4}
    summary = run(
        tiny_model_dir, train_file, tmp_path, tiny_cfg(max_steps="auto", auto_steps=steps, compute_dtype="auto")
    )
    assert summary["step_budget"] == step_budget(resolve_compute_dtype("auto"))
    assert summary["steps"] == steps[summary["step_budget"]]


def test_train_records_the_dtype_and_attention_it_chose(tiny_model_dir, train_file, tmp_path):
    from stages.train import resolve_attention, resolve_compute_dtype

    summary = run(tiny_model_dir, train_file, tmp_path, tiny_cfg(max_steps=2, compute_dtype="auto"))
    assert summary["compute_dtype"] == resolve_compute_dtype("auto") in ("float32", "bfloat16")
    assert summary["attention"] == resolve_attention("auto", summary["compute_dtype"], on_gpu=False)


def test_a_bf16_run_trains_with_eager_attention_and_bf16_lora_inputs(tiny_model_dir, train_file, tmp_path):
    """bf16 works on every CPU (emulated where not native, so slow but right): the path the AMX default takes."""
    from transformers import TrainerCallback

    seen = {}

    class Look(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            adapted = model.base_model.model.model.layers[0].self_attn.q_proj
            seen.update(attention=model.config._attn_implementation, casting=adapted.cast_input_dtype_enabled)

    summary = run(tiny_model_dir, train_file, tmp_path, tiny_cfg(max_steps=2, compute_dtype="bfloat16"), [Look()])
    assert seen == {"attention": "eager", "casting": False} and summary["attention"] == "eager"
    assert math.isfinite(summary["final_loss"])


def test_full_fine_tune_trains_every_weight_and_merge_keeps_it(tiny_model_dir, train_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from stages.merge import MergeConfig, merge

    summary = run(tiny_model_dir, train_file, tmp_path, tiny_cfg(method="full", max_steps=3, learning_rate=1e-3))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert summary["method"] == "full"
    assert summary["trainable_parameters"] == sum(p.numel() for p in base.parameters())
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()
    model, _, report = merge(MergeConfig(), base_dir=tiny_model_dir, adapter_dir=tmp_path / "adapter")
    assert report["method"] == "full" and report["parameters"] == summary["trainable_parameters"]
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, base.get_parameter(name))]
    assert "model.embed_tokens.weight" in changed and len(changed) > len(list(base.parameters())) // 2


class OptimizerGroups(TrainerCallback):
    """The learning rate each trainable parameter's optimizer group starts with, by parameter name."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): name for name, p in model.named_parameters()}
        self.lr = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_lora_top_layers_adapts_only_those_and_stops_backpropagation_below(tiny_model_dir, train_file, tmp_path):
    from peft import get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from stages.train import lora_config

    run(tiny_model_dir, train_file, tmp_path, tiny_cfg(lora_top_layers=1, max_steps=2))
    adapted = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapted and all(".layers.1." in name for name in adapted)  # the tiny model has layers 0 and 1

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_config(tiny_cfg(lora_top_layers=1), 2)
    )
    needs_grad = {}

    def record(index):
        def hook(module, args, out):  # returns None: the layer's output is left as it is
            needs_grad[index] = (out if isinstance(out, torch.Tensor) else out[0]).requires_grad

        return hook

    for i, layer in enumerate(model.base_model.model.model.layers):
        layer.register_forward_hook(record(i))
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    assert needs_grad == {0: False, 1: True}  # no autograd graph, so no backward pass, through layer 0


def test_lora_top_layers_beyond_the_model(tiny_model_dir, train_file, tmp_path):
    with pytest.raises(ParamError, match="train.lora_top_layers: 3, but the model has only 2 layers"):
        run(tiny_model_dir, train_file, tmp_path, tiny_cfg(lora_top_layers=3))


@pytest.mark.parametrize("ratio", [1.0, 4.0])
def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate(tiny_model_dir, train_file, tmp_path, ratio):
    groups = OptimizerGroups()
    run(tiny_model_dir, train_file, tmp_path, tiny_cfg(loraplus_lr_ratio=ratio, max_steps=1), [groups])
    a_rates = {round(lr, 9) for name, lr in groups.lr.items() if "lora_A" in name}
    b_rates = {round(lr, 9) for name, lr in groups.lr.items() if "lora_B" in name}
    assert len(groups.lr) == 2 * 2 * 7  # A and B of 7 projections in 2 layers: nothing else is trained
    assert a_rates == {3e-3} and b_rates == {round(3e-3 * ratio, 9)}


def test_full_fine_tune_refuses_a_4bit_base():
    with pytest.raises(ParamError, match=r"quantization: expected none with method full"):
        TrainConfig(method="full", quantization="nf4")


def test_padding_free_batches_give_the_padded_loss(tiny_model_dir, train_file, tmp_path):
    """One packed sequence per batch must score each example as if alone: were the examples attending
    to each other (no block-diagonal mask), the first loss would differ from the padded batch's."""
    losses = {}
    for padding_free in (False, True):
        recorder = LossRecorder()
        cfg = tiny_cfg(padding_free=padding_free, max_steps=1, learning_rate=1e-9)
        run(tiny_model_dir, train_file, tmp_path / str(padding_free), cfg, [recorder])
        losses[padding_free] = recorder.losses[0]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_training_ends_by_scoring_validation_rows(tiny_model_dir, train_file, tmp_path):
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:5]))
    summary = train(
        tiny_cfg(max_steps=1, score_examples=3),
        base_dir=tiny_model_dir,
        train_file=train_file,
        validation_file=validation,
        adapter_dir=tmp_path / "adapter",
        checkpoint_dir=tmp_path / "ckpt",
        live_dir=None,
    )
    assert summary["validation_scored"] == 3
    assert 0.0 <= summary["validation_exact_match"] <= 1.0
    assert set(summary["validation_field_accuracy"]) == {"action", "product", "quantity"}


def test_learning_curve_scores_validation_rows_at_the_asked_steps(tiny_model_dir, train_file, tmp_path):
    from tools.learning_curve import curve, parse_steps

    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:4]))
    points = curve(tiny_cfg(score_examples=2), parse_steps("3,1"), tiny_model_dir, train_file, validation)
    assert [(p["step"], p["requests_seen"], p["validation_scored"]) for p in points] == [(1, 8, 2), (3, 24, 2)]
    assert points[0]["train_seconds"] <= points[1]["train_seconds"]
    with pytest.raises(ParamError, match="--at: expected positive step numbers"):
        parse_steps("0,x")


class FinalLogits(TrainerCallback):
    """The trained model's logits on a fixed input, as training leaves it in memory."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            self.logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.clone()


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_mutated_init_is_saved_as_a_plain_adapter_that_merges_into_the_trained_model(
    tiny_model_dir, train_file, tmp_path, init
):
    from transformers import AutoModelForCausalLM

    from stages.merge import MergeConfig, merge

    final = FinalLogits()
    # float32 on every CPU: trained in bf16 (auto, on AVX512_BF16) the model in memory differs from the float32
    # merge by bf16's rounding (5e-3), which would hide the conversion error this test looks for
    run(tiny_model_dir, train_file, tmp_path, tiny_cfg(lora_init=init, max_steps=3, compute_dtype="float32"), [final])
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 2 * 8  # [A | A0] x [B | -B0]: on the unchanged base
    merged, _, _ = merge(MergeConfig(), base_dir=tiny_model_dir, adapter_dir=tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        merged_logits = merged(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
        base_logits = base(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert not torch.allclose(final.logits, base_logits, atol=1e-3)  # training moved it
    torch.testing.assert_close(merged_logits, final.logits, atol=1e-4, rtol=1e-4)


def test_a_pissa_run_resumed_from_its_checkpoint_merges_into_the_uninterrupted_model(
    tiny_model_dir, train_file, tmp_path
):
    """A resume decomposes the base again and loads the trained adapter on that residual: it must be the
    residual the first run trained on, and the initial adapter saved again must be the first run's."""
    from stages.merge import MergeConfig, merge

    cfg = tiny_cfg(lora_init="pissa", max_steps=6, save_steps=3, compute_dtype="float32")  # as above: exact merges
    straight = FinalLogits()
    run(tiny_model_dir, train_file, tmp_path / "straight", cfg, [straight])
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, train_file, tmp_path / "cut", cfg, [StopAt(4)])
    resumed = FinalLogits()
    summary = run(tiny_model_dir, train_file, tmp_path / "cut", cfg, [resumed])
    assert summary["resumed"] and summary["steps_this_run"] == 3
    torch.testing.assert_close(resumed.logits, straight.logits, atol=1e-4, rtol=1e-4)
    merged, _, _ = merge(MergeConfig(), base_dir=tiny_model_dir, adapter_dir=tmp_path / "cut" / "adapter")
    with torch.no_grad():
        merged_logits = merged(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    torch.testing.assert_close(merged_logits, straight.logits, atol=1e-4, rtol=1e-4)
