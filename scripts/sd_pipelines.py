"""SD 1.5- and SDXL-sized pipeline folders with random weights, for scripts/gpu-sd-check.sh.

The architectures are the published ones (runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0:
their unet/, text_encoder(_2)/, vae/ and scheduler/ configs, written out below from the published values), so the
networks have the real sizes and shapes; the weights are random (nothing is downloaded) and the tokenizers are the
tiny printable-ASCII CLIP vocabulary of python-worker/tests/pipelines.py, padded to the real 77 tokens. The text
encoders keep the real 49,408-row token embedding (the tiny vocabulary uses its first ids), so they have their
published parameter counts too.

On disk the weights are float16 by default (`--dtype`): SDXL's folder is about 6.9 GB instead of 13.9 GB in float32,
and fp16 safetensors are what the published folders mostly ship; the workers load every component with an explicit
float32 dtype, so they are upcast on load and train as from a float32 folder.

    python scripts/sd_pipelines.py build sd15|sdxl OUT [sd15|sdxl OUT ...] [--size full|tiny] [--dtype fp16|bf16|fp32]
                                         [--device cpu|cuda] [--images DIR]
    python scripts/sd_pipelines.py count [sd15|sdxl]     # parameter counts of the full configs (meta device: no memory)
    python scripts/sd_pipelines.py skeleton sd15|sdxl OUT  # configs + safetensors headers over sparse holes: for dmd2 plan

`--size tiny` assembles the same pipeline from the tiny test configs (tests/pipelines.py: what the CPU dry run of
gpu-sd-check.sh uses), through the same dtype cast and save. `--device cuda` initialises the random weights on the
GPU (seconds instead of a minute or more for SDXL on a CPU); they are saved from there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python-worker" / "tests"))
import pipelines as tiny  # noqa: E402  (tests/pipelines.py: the tiny configs and the tokenizer vocabulary)

from diffusers import (AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,  # noqa: E402
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

MAX_LEN = 77          # both families' tokenizer model_max_length and the text encoders' max_position_embeddings
VOCAB = 49408         # CLIP's BPE vocabulary size (the embedding's rows)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# --- the published configurations ------------------------------------------------------------------------------

# Both families' training schedule (SD 1.5's and SDXL base's scheduler configs share these values).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                trained_betas=None)

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(320, 640, 1280), layers_per_block=2,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + 1280 pooled
    upcast_attention=False, resnet_time_scale_shift="default", time_embedding_type="positional",
)


def vae_config(sample_size: int, scaling_factor: float) -> dict:
    """SD 1.5's and SDXL's AutoencoderKL (the same architecture; the image size and latent scale differ)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=sample_size,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", norm_num_groups=32,
                scaling_factor=scaling_factor, force_upcast=True)


def clip_l(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """OpenAI CLIP ViT-L/14's text tower (SD 1.5's text encoder, SDXL's first)."""
    return _text(tokenizer, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu")


def openclip_bigg(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's second text encoder)."""
    return _text(tokenizer, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 projection_dim=1280, hidden_act="gelu")


def _text(tokenizer: CLIPTokenizer, **arch) -> CLIPTextConfig:
    # The published configs say bos 0 / eos 2 / pad 1 (CLIP's legacy ids; transformers then takes the highest id
    # as the end of the prompt). Here the ids are the tiny tokenizer's own, which is what the tiny test pipelines do.
    return CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=MAX_LEN, layer_norm_eps=1e-5,
                          attention_dropout=0.0, dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
                          bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                          eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                          pad_token_id=tokenizer.pad_token_id, **arch)


def sd15_scheduler() -> PNDMScheduler:
    return PNDMScheduler(**SCHEDULE, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


def sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**SCHEDULE, prediction_type="epsilon", interpolation_type="linear",
                                  use_karras_sigmas=False, steps_offset=1, timestep_spacing="leading")


# --- building -----------------------------------------------------------------------------------------------------

def tokenizer(work: Path, size: str, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    if size == "tiny":
        return tiny.tiny_tokenizer(work, pad_token=pad_token)
    tiny.write_tokenizer_files(work)
    return CLIPTokenizer.from_pretrained(work, model_max_length=MAX_LEN, pad_token=pad_token)


def components(family: str, size: str, work: Path) -> dict:
    """The pipeline's tokenizers and networks (random weights, on the current default device); no scheduler."""
    if family == "sd15":
        tok = tokenizer(work / "tok", size)
        if size == "tiny":
            return dict(tokenizer=tok, text_encoder=CLIPTextModel(tiny.text_config(tok, 32, 32, "quick_gelu")),
                        unet=tiny.tiny_unet(32), vae=tiny.tiny_vae())
        return dict(tokenizer=tok, text_encoder=CLIPTextModel(clip_l(tok)), unet=UNet2DConditionModel(**SD15_UNET),
                    vae=AutoencoderKL(**vae_config(512, 0.18215)))
    tok, tok2 = tokenizer(work / "tok", size), tokenizer(work / "tok2", size, pad_token="!")  # SDXL's 2nd pads "!"
    if size == "tiny":
        return dict(tokenizer=tok, tokenizer_2=tok2,
                    text_encoder=CLIPTextModel(tiny.text_config(tok, 32, 32, "quick_gelu")),
                    text_encoder_2=CLIPTextModelWithProjection(tiny.text_config(tok2, 48, 24, "gelu")),
                    unet=tiny.tiny_unet(80, addition_embed_type="text_time", addition_time_embed_dim=8,
                                        projection_class_embeddings_input_dim=6 * 8 + 24, use_linear_projection=True),
                    vae=tiny.tiny_vae())
    return dict(tokenizer=tok, tokenizer_2=tok2, text_encoder=CLIPTextModel(clip_l(tok)),
                text_encoder_2=CLIPTextModelWithProjection(openclip_bigg(tok2)),
                unet=UNet2DConditionModel(**SDXL_UNET), vae=AutoencoderKL(**vae_config(1024, 0.13025)))


NETWORKS = ("unet", "text_encoder", "text_encoder_2", "vae")


def build(family: str, out: Path, size: str = "full", dtype: str = "fp16", device: str = "cpu", seed: int = 0) -> dict:
    """Writes the pipeline folder `out`; returns each network's parameter count."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as work, torch.device(device):
        parts = components(family, size, Path(work))
    counts = {k: sum(p.numel() for p in parts[k].parameters()) for k in NETWORKS if k in parts}
    for k in NETWORKS:
        if k in parts:
            parts[k].to("cpu", DTYPES[dtype]).eval()  # saved from the CPU
    if family == "sd15":
        pipe = StableDiffusionPipeline(**parts, scheduler=sd15_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(**parts, scheduler=sdxl_scheduler(), add_watermarker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return counts


def count(family: str) -> dict:
    """Parameter counts of the full configs, built on the meta device (no memory, no initialisation)."""
    with tempfile.TemporaryDirectory() as work, torch.device("meta"):
        parts = components(family, "full", Path(work))
    return {k: sum(p.numel() for p in parts[k].parameters()) for k in NETWORKS if k in parts}


def skeleton(family: str, out: Path) -> dict:
    """A pipeline folder with the full configs, tokenizers and scheduler, whose safetensors files hold a real header
    (every tensor's name, float16 shape and offsets) over a sparse hole instead of weights: what `dmd2 plan` reads,
    at no disk cost (networks built on the meta device). Not loadable by a worker. Returns the parameter counts."""
    with tempfile.TemporaryDirectory() as work, torch.device("meta"):
        parts = components(family, "full", Path(work))
        out.mkdir(parents=True, exist_ok=True)
        index = {"_class_name": "StableDiffusionPipeline" if family == "sd15" else "StableDiffusionXLPipeline"}
        for name, part in parts.items():
            folder = out / name
            folder.mkdir(exist_ok=True)
            index[name] = ["transformers" if name.startswith(("text_encoder", "tokenizer")) else "diffusers",
                           type(part).__name__]
            if name.startswith("tokenizer"):
                part.save_pretrained(folder)
                continue
            (part.save_config if hasattr(part, "save_config") else part.config.save_pretrained)(folder)
            header, offset = {}, 0
            for key, tensor in part.state_dict().items():
                size = tensor.numel() * 2
                header[key] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
                offset += size
            blob = json.dumps(header).encode()
            stem = "model" if name.startswith("text_encoder") else "diffusion_pytorch_model"
            with open(folder / f"{stem}.safetensors", "wb") as f:
                f.write(len(blob).to_bytes(8, "little") + blob)
                f.truncate(8 + len(blob) + offset)  # a hole: the file has its full length, the disk holds the header
    scheduler = sd15_scheduler() if family == "sd15" else sdxl_scheduler()
    scheduler.save_pretrained(out / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return {k: sum(p.numel() for p in parts[k].parameters()) for k in NETWORKS if k in parts}


def show(counts: dict) -> str:
    return ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in counts.items())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write pipeline folders: FAMILY OUT [FAMILY OUT ...], FAMILY sd15 or sdxl")
    b.add_argument("pairs", nargs="*", metavar="FAMILY OUT")
    b.add_argument("--size", choices=("full", "tiny"), default="full")
    b.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    b.add_argument("--device", default="cpu")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--images", type=Path, help="also write 4 random 64x64 PNGs and a captions.txt into this folder")
    c = sub.add_parser("count", help="parameter counts of the full configs")
    c.add_argument("family", nargs="?", choices=("sd15", "sdxl"))
    k = sub.add_parser("skeleton", help="a full-size folder for dmd2 plan: configs and safetensors headers over "
                                        "sparse holes (no weights, no disk)")
    k.add_argument("family", choices=("sd15", "sdxl"))
    k.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    diffusers_logging.set_verbosity_error()  # e.g. "modules that should be kept in float32: []" on the dtype cast
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # "Writing model shards"
    if args.cmd == "skeleton":
        print(json.dumps(skeleton(args.family, args.out)))
        return 0
    if args.cmd == "count":
        for family in [args.family] if args.family else ["sd15", "sdxl"]:
            print(f"{family}: {show(count(family))}")
        return 0
    if len(args.pairs) % 2 or any(f not in ("sd15", "sdxl") for f in args.pairs[::2]):
        ap.error("build takes FAMILY OUT pairs, FAMILY sd15 or sdxl")
    if args.images:
        tiny.write_images(args.images, 4, 64)
    failed = 0
    for family, out in zip(args.pairs[::2], map(Path, args.pairs[1::2])):
        # one process for every folder (the imports take seconds); a folder is written under a temporary name and
        # renamed when complete, and a failure is reported and the next folder built
        t0 = time.perf_counter()
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            counts = build(family, tmp, args.size, args.dtype, args.device, args.seed)
        except Exception:
            traceback.print_exc()
            print(f"building the {family} pipeline FAILED (traceback above)", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
            failed += 1
            continue
        finally:
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        print(f"{family} ({args.size}, {args.dtype} on disk): {show(counts)}; {mb:,.0f} MiB in {out}, "
              f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
