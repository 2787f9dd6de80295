"""Tiny SD-1.5-like, SDXL-like and SD3-like pipeline folders built from configs (random weights, a CLIP tokenizer whose
vocab.json / merges.txt are written here), saved with save_pretrained: what the adapter, role and end-to-end tests
load through the real `from_pretrained(folder)` code. Also a command line for the TypeScript end-to-end tests:

    python python-worker/tests/pipelines.py <tiny builder> OUT   # a pipeline folder (TINY_BUILDERS: a family's,
                                                                 # or a variant of VARIANT_BUILDERS: flux-schnell)
    python python-worker/tests/pipelines.py images OUT N [SIZE]  # N random RGB PNGs and a captions.txt
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_LEN = 16           # tokenizer model_max_length (77 in the real models)
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def write_tokenizer_files(folder: Path) -> None:
    """A CLIP BPE vocabulary over printable ASCII: every character alone and word-final ('x</w>'), a few merges,
    and the two special tokens. Characters outside it become <|endoftext|> (the unknown token)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>"), ("m", "a"),
              ("ma", "t</w>"), ("o", "n</w>")]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def tiny_tokenizer(tmp: Path, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    write_tokenizer_files(tmp)
    return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LEN, pad_token=pad_token)


def text_config(tokenizer: CLIPTokenizer, hidden: int, projection: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LEN,
                          projection_dim=projection, hidden_act=act,
                          bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                          eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                          pad_token_id=tokenizer.pad_token_id)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=16)


def tiny_unet(cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, norm_num_groups=32, attention_head_dim=(2, 4),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, **extra)


def build_sd15(out: Path, work: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(work / "tok")
    text_encoder = CLIPTextModel(text_config(tokenizer, 32, 32, "quick_gelu"))
    # SD 1.5's own scheduler config: PNDM, set_alpha_to_one false, steps_offset 1, no clip_sample key.
    scheduler = PNDMScheduler(**SCHEDULE, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=tiny_unet(32), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def build_sdxl(out: Path, work: Path) -> Path:
    torch.manual_seed(1)
    tokenizer = tiny_tokenizer(work / "tok")
    tokenizer_2 = tiny_tokenizer(work / "tok2", pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder = CLIPTextModel(text_config(tokenizer, 32, 32, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, 48, 24, "gelu"))
    # cross-attention sees both encoders' hidden states (32 + 48); the added embedding takes 6 time ids x 8
    # + the pooled projection (24).
    unet = tiny_unet(80, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 24, use_linear_projection=True)
    # SDXL base's own scheduler config: Euler, leading spacing, steps_offset 1, no set_alpha_to_one / clip_sample.
    scheduler = EulerDiscreteScheduler(**SCHEDULE, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.save_pretrained(out)
    return out


GMM_DATA = {"source": "gmm", "gmm": {"num_classes": 4, "image_size": 8, "std": 0.1}}  # the tiny recipe's data


def build_unet2d(out: Path, work: Path) -> Path:
    """A class-conditional UNet2DModel teacher folder (what dmd2 train-teacher writes) for the tiny recipe's data:
    4 classes of 1 x 8 x 8 images, the tiny recipe's (and SD's) scaled-linear schedule."""
    from dmd2_worker.config import DiffusionConfig
    from dmd2_worker.models.unet2d import teacher_unet_config
    from dmd2_worker.teacher_folder import write_teacher_folder
    from diffusers import UNet2DModel

    torch.manual_seed(2)
    k = GMM_DATA["gmm"]["num_classes"]
    unet = UNet2DModel(**teacher_unet_config(image_shape=(1, 8, 8), block_out_channels=[8, 16], layers_per_block=1,
                                             norm_num_groups=4, num_classes=k))
    diffusion = DiffusionConfig(**SCHEDULE, prediction_type="epsilon")
    return write_teacher_folder(out, unet, diffusion, k, GMM_DATA, {})


def with_prediction_type(folder: Path, out: Path, prediction_type: str) -> Path:
    shutil.copytree(folder, out)
    path = out / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    cfg["prediction_type"] = prediction_type
    path.write_text(json.dumps(cfg))
    return out


# --- SD3 (flow matching) ---------------------------------------------------------------------------------------

T5_WORDS = ("cat", "dog", "the", "mat", "on", "a")


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer built in memory, no sentencepiece file: '<pad>' 0, '</s>' 1, '<unk>' 2, then
    printable ASCII alone and word-initial ('\u2581x') and a few whole words, no extra ids."""
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [("\u2581" + c, -3.0) for c in chars]
             + [(c, -4.0) for c in chars] + [("\u2581" + w, -1.0) for w in T5_WORDS])
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_sd3_vae() -> AutoencoderKL:
    """SD3's VAE layout: 16 latent channels, no quant convs, a shift factor beside the scaling factor."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=16, norm_num_groups=8, sample_size=16, shift_factor=0.0609,
                         scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False)


def build_sd3(out: Path, work: Path) -> Path:
    """CLIP-L (hidden 16) + CLIP-G (hidden 24) padded to the T5 width 48; pooled projections 16 + 24; a 2-block
    SD3Transformer2DModel on 8x8x16 latents (patch 2); the flow scheduler with SD3's shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(2)
    tokenizer = tiny_tokenizer(work / "tok")
    tokenizer_2 = tiny_tokenizer(work / "tok2", pad_token="!")
    tokenizer_3 = tiny_t5_tokenizer()
    text_encoder = CLIPTextModelWithProjection(text_config(tokenizer, 16, 16, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, 24, 24, "gelu"))
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=48, d_ff=64, d_kv=12, num_layers=2,
                                             num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                             pad_token_id=0, eos_token_id=1))
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=48,
                                        caption_projection_dim=32, pooled_projection_dim=40, pos_embed_max_size=8)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=tiny_sd3_vae(),
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipe.save_pretrained(out)
    return out


def build_flux(out: Path, work: Path, schnell: bool = False) -> Path:
    """Flux.1-dev-like (guidance embedding, dynamic shifting as in its scheduler config) or, with `schnell`,
    schnell-like (neither; shift 1): CLIP (hidden 16, pooled) + T5 (48); a FluxTransformer2DModel with one double
    and one single block on 2x2-packed 16-channel latents (in_channels 64)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(3)
    tokenizer = tiny_tokenizer(work / "tok")
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder = CLIPTextModel(text_config(tokenizer, 16, 16, "quick_gelu"))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=48, d_ff=64, d_kv=12, num_layers=2,
                                             num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                             pad_token_id=0, eos_token_id=1))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                         pooled_projection_dim=16, guidance_embeds=not schnell, axes_dims_rope=(4, 4, 8))
    vae = tiny_sd3_vae()
    vae.register_to_config(shift_factor=0.1159, scaling_factor=0.3611)  # Flux's
    if schnell:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(out)
    return out


# --- Sana (flow matching, Gemma, DC-AE) ------------------------------------------------------------------------

def tiny_gemma_tokenizer():
    """A Gemma (BPE) tokenizer built in memory: the special tokens, '\u2581' and printable ASCII alone and
    word-initial ('\u2581x'); characters outside it (the newline) become <unk>."""
    from transformers import GemmaTokenizer

    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581"] + chars + ["\u2581" + c for c in chars]
    return GemmaTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))},
                          merges=[("\u2581", c) for c in chars])


def build_sana(out: Path, work: Path) -> Path:
    """A 2-block SanaTransformer2DModel on 16x16x4 latents (patch 1), a 1-layer Gemma2 (width 16), a 2-stage
    AutoencoderDC (scale factor 2, so 32 px images: the pipeline wants sides divisible by 32) and FlowMatchEulerDiscreteScheduler with shift 3 (the
    configs of diffusers' own Sana tests, a little wider)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(4)
    tokenizer = tiny_gemma_tokenizer()
    text_encoder = Gemma2Model(Gemma2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                            head_dim=8, max_position_embeddings=4096, pad_token_id=0,
                                            attn_implementation="eager"))
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                         num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2,
                                         cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
                                         sample_size=16)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=(1, 1), downsample_block_type="conv",
                        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)
    pipe.save_pretrained(out)
    return out


CAPTIONS = ["a cat", "the dog", "a mat", "the cat on a mat"]


def write_images(folder: Path, n: int, size: int = 16, seed: int = 0, captions: bool = True) -> Path:
    """`n` random RGB PNGs `<i>.png` of `size` x `size` and, with `captions`, a captions.txt giving all but the
    last a caption (the last gets the empty prompt)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    if captions:
        lines = ["# file name, a tab, its caption"] + [f"{i}.png\t{CAPTIONS[i % len(CAPTIONS)]}" for i in range(n - 1)]
        (folder / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# The tiny builder of every registered family, by its registry entry's `tiny_builder` (families.json): the generic
# test (test_every_family.py) fails for a family without one. Each takes (out folder, a scratch folder).
TINY_BUILDERS = {"unet2d": build_unet2d, "sd15": build_sd15, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux,
                 "sana": build_sana}
# other folders of a family, for the command line (a guidance-free Flux.1-schnell-like transformer)
VARIANT_BUILDERS = {"flux-schnell": lambda out, work: build_flux(out, work, schnell=True)}


def main(argv: list[str]) -> int:
    import tempfile

    builders = {**TINY_BUILDERS, **VARIANT_BUILDERS}
    if len(argv) >= 2 and argv[0] in builders:
        with tempfile.TemporaryDirectory() as work:
            builders[argv[0]](Path(argv[1]), Path(work))
        return 0
    if len(argv) in (3, 4) and argv[0] == "images":
        write_images(Path(argv[1]), int(argv[2]), int(argv[3]) if len(argv) == 4 else 16)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
