"""scripts/sd_pipelines.py, the builder behind scripts/gpu-sd-check.sh: its full configs are the published SD 1.5 and
SDXL base architectures (exact parameter counts, built on the meta device: no memory), their shapes fit the SDXL
adapter's checks, and a folder written in float16 loads through the adapters in float32 with 77-token prompts for the
full tokenizer. The script's own dry run is test/gpu-sd-check.test.ts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import sd_pipelines  # noqa: E402

from dmd2_worker.adapters.registry import load_adapter  # noqa: E402
from dmd2_worker.adapters.sdxl import SDXLAdapter  # noqa: E402

# The published folders' parameter counts (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0).
SD15 = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
SDXL = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863}


def test_full_configs_have_the_published_parameter_counts():
    assert sd_pipelines.count("sd15") == SD15
    assert sd_pipelines.count("sdxl") == SDXL


def test_full_sdxl_fits_the_adapter_checks_and_the_unet_takes_77_token_prompts(tmp_path):
    with torch.device("meta"):
        p = sd_pipelines.components("sdxl", "full", tmp_path)
    adapter = SDXLAdapter(tmp_path, p["unet"], p["vae"], dict(sd_pipelines.sdxl_scheduler().config),
                          torch.device("meta"), torch.float32, (p["tokenizer"], p["tokenizer_2"]),
                          (p["text_encoder"], p["text_encoder_2"]))
    assert (adapter.latent_shape, adapter.image_size, adapter.sequence_length) == ((4, 128, 128), 1024, 77)
    assert (adapter.hidden_size, adapter.pooled_dim) == (2048, 1280)
    with torch.device("meta"):  # shapes only
        out = p["unet"](torch.empty(2, 4, 128, 128), torch.tensor([999, 749]),
                        encoder_hidden_states=torch.empty(2, 77, 2048),
                        added_cond_kwargs={"text_embeds": torch.empty(2, 1280), "time_ids": torch.empty(2, 6)}).sample
    assert out.shape == (2, 4, 128, 128)


def test_full_tokenizer_pads_and_cuts_to_77(tmp_path):
    tok = sd_pipelines.tokenizer(tmp_path, "full")
    ids = tok(["a cat", "x" * 300], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert [len(i) for i in ids] == [77, 77]
    assert max(max(i) for i in ids) < sd_pipelines.VOCAB


def test_a_float16_folder_loads_in_float32(tmp_path):
    for family in ("sd15", "sdxl"):
        out = tmp_path / family
        sd_pipelines.build(family, out, size="tiny", dtype="fp16")
        with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
        assert json.loads((out / "model_index.json").read_text())["_class_name"].startswith("StableDiffusion")
        adapter = load_adapter(out)
        assert adapter.family == family
        assert {m.dtype for m in adapter.modules().values()} == {torch.float32}
        cond = adapter.encode_prompts(["a cat"])
        assert torch.isfinite(cond.encoder_hidden_states).all()
