"""The latent cache of the GAN's real branch for text-to-image teachers (docs/adapters.md §6):
`<run_dir>/latents/`, written once by the fake score's worker at set-up and reused while it matches.

Layout:
```
latents/index.json                 {"format", "key": {...what it was made from...}, "num_images", "latent_shape",
                                    "num_captions", "shards": [{"file", "count", "bytes"}], "captions_file"}
latents/shard-00000.safetensors    "latents" float32 (n, C, H, W): the VAE posterior mean, scaled as the UNet sees it
                                   "caption" int64 (n,): the row of each image's caption in captions.safetensors
latents/captions.safetensors       "cond_hidden" float32 (K, L, D), and for SDXL "cond_pooled" (K, P) and
                                   "cond_time_ids" (K, 6): the encodings of the K distinct captions
```
`key` holds the image folder, every image's name, size and mtime (ns), captions.txt's, the teacher folder and its
VAE and text encoder weight files' sizes and mtimes, and the image size. When it differs from the folder as it is
now (a file added, removed, replaced or touched), the cache is made again; the new one is written to a temporary
folder and renamed over the old one, so a crash never leaves half a cache that looks whole.

Images are the image files directly in the folder (PNG, JPEG, BMP, WebP; sorted by name), converted to RGB,
centre-cropped to a square and resized (bicubic) to the teacher's image size (its UNet's sample_size times the VAE
scale factor). Captions: `captions.txt` (prompts.py); an image without one gets the empty prompt's encoding.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .adapters.base import Conditioning
from .prompts import IMAGES_KEY, PromptsError, find_captions_file, read_captions

CACHE_DIR = "latents"
INDEX = "index.json"
CAPTIONS = "captions.safetensors"
FORMAT = 1
SHARD_SIZE = 1024     # images per shard
ENCODE_BATCH = 8      # images per VAE call
TEXT_BATCH = 32       # captions per text-encoder call
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

Log = Callable[[str], None]


def _signature(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, int(st.st_size), int(st.st_mtime_ns)]


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files skipped)."""
    if not folder.exists():
        raise PromptsError(IMAGES_KEY, f"{IMAGES_KEY}: {folder} does not exist (give the folder of real images)")
    if not folder.is_dir():
        raise PromptsError(IMAGES_KEY, f"{IMAGES_KEY}: {folder} is not a folder (give the folder of real images)")
    files = sorted(p for p in folder.iterdir()
                   if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PromptsError(IMAGES_KEY, f"{IMAGES_KEY}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) "
                                       f"directly in it")
    return files


def _weights_signature(teacher: Path, subfolders: Sequence[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for sub in subfolders:
        d = teacher / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"):
                    out[f"{sub}/{p.name}"] = _signature(p)[1:]
    return out


def cache_key(images: Path, teacher: Path, image_size: int) -> dict[str, Any]:
    """What the cache is made from, as it is on disk now (see the module doc)."""
    files = image_files(images)
    captions = find_captions_file(images)
    return {
        "images": str(images),
        "files": [_signature(p) for p in files],
        "captions": None if captions is None else [str(captions), *_signature(captions)[1:]],
        "teacher": str(teacher),
        "weights": _weights_signature(teacher, ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")),
        "image_size": int(image_size),
    }


@dataclass
class LatentCache:
    """The cache in memory (CPU): latents (N, C, H, W), each image's caption row, and the captions' encodings."""

    latents: torch.Tensor
    caption: torch.Tensor
    captions: Conditioning
    directory: Path
    built: bool  # made now (False: reused)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning]:
        """n latents drawn uniformly with replacement (indices from `generator`) and their captions' encodings."""
        index = torch.randint(0, len(self), (n,), generator=generator)
        return self.latents[index], self.captions.rows(self.caption[index])


# --- reading ---------------------------------------------------------------------------------------------------

def read_index(directory: Path) -> dict[str, Any] | None:
    try:
        index = json.loads((directory / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("format") == FORMAT else None


def index_matches(directory: Path, key: dict[str, Any]) -> bool:
    """The cache in `directory` was made from `key` and its files are all there with their recorded sizes."""
    index = read_index(directory)
    if index is None or index.get("key") != json.loads(json.dumps(key)):
        return False
    for shard in index.get("shards", []):
        p = directory / str(shard.get("file"))
        if not p.is_file() or p.stat().st_size != shard.get("bytes"):
            return False
    return (directory / str(index.get("captions_file"))).is_file()


def load_cache(directory: Path, built: bool = False) -> LatentCache:
    index = read_index(directory)
    if index is None:
        raise ValueError(f"{directory / INDEX}: missing or not a latent cache index")
    latents, caption = [], []
    for shard in index["shards"]:
        tensors = load_file(str(directory / shard["file"]))
        latents.append(tensors["latents"])
        caption.append(tensors["caption"])
    caps = load_file(str(directory / index["captions_file"]))
    cond = Conditioning(caps["cond_hidden"], caps.get("cond_pooled"), caps.get("cond_time_ids"))
    return LatentCache(torch.cat(latents), torch.cat(caption), cond, directory, built)


# --- writing ---------------------------------------------------------------------------------------------------

def load_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: RGB, centre-cropped to a square, resized (bicubic)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise PromptsError(IMAGES_KEY, f"{IMAGES_KEY}: {path}: cannot read image: {reason} (remove or replace "
                                       f"the file)") from None
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    rgb = rgb.crop((left, top, left + side, top + side))
    if side != size:
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _pixels(arrays: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32)
    return x.div(127.5).sub(1.0)


def build_cache(directory: Path, key: dict[str, Any], adapter: Any, log: Log) -> None:
    """Encode the images and captions of `key` with `adapter` (vae_encode, encode_prompts) into `directory`
    (written to a temporary sibling folder first, then renamed over it)."""
    images = Path(key["images"])
    files = image_files(images)
    names = [p.name for p in files]
    captions_path = find_captions_file(images)
    by_name = read_captions(captions_path, names) if captions_path is not None else {}
    texts = [by_name.get(n, "") for n in names]
    distinct = list(dict.fromkeys(texts))
    row = {c: i for i, c in enumerate(distinct)}

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        started = time.monotonic()
        n = len(files)
        log(f"latent cache: encoding {n} images of {images} with the teacher's VAE into {directory}")
        shards: list[dict[str, Any]] = []
        latent_shape: list[int] | None = None
        next_report = 0.0
        with torch.no_grad():
            for s0 in range(0, n, SHARD_SIZE):
                chunk = files[s0:s0 + SHARD_SIZE]
                parts = []
                for b0 in range(0, len(chunk), ENCODE_BATCH):
                    batch = [load_image(p, key["image_size"]) for p in chunk[b0:b0 + ENCODE_BATCH]]
                    parts.append(adapter.vae_encode(_pixels(batch)).float().cpu())
                    done = s0 + b0 + len(batch)
                    if done / n >= next_report or done == n:
                        log(f"latent cache: {done}/{n} images encoded")
                        next_report = done / n + 0.1
                latents = torch.cat(parts).contiguous()
                latent_shape = list(latents.shape[1:])
                caption = torch.tensor([row[t] for t in texts[s0:s0 + SHARD_SIZE]], dtype=torch.long)
                name = f"shard-{len(shards):05d}.safetensors"
                save_file({"latents": latents, "caption": caption}, str(tmp / name))
                shards.append({"file": name, "count": len(chunk), "bytes": (tmp / name).stat().st_size})
            encoded = [adapter.encode_prompts(distinct[i:i + TEXT_BATCH]).to("cpu", torch.float32)
                       for i in range(0, len(distinct), TEXT_BATCH)]
        cond = Conditioning.cat(encoded)
        tensors = {"cond_hidden": cond.encoder_hidden_states.contiguous()}
        if cond.text_embeds is not None:
            tensors["cond_pooled"] = cond.text_embeds.contiguous()
        if cond.time_ids is not None:
            tensors["cond_time_ids"] = cond.time_ids.contiguous()
        save_file(tensors, str(tmp / CAPTIONS))
        index = {"format": FORMAT, "key": key, "num_images": n, "latent_shape": latent_shape,
                 "num_captions": len(distinct), "shards": shards, "captions_file": CAPTIONS,
                 "seconds": round(time.monotonic() - started, 3)}
        (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        if directory.exists():
            os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
        log(f"latent cache: {n} images, {len(distinct)} distinct captions, written in "
            f"{time.monotonic() - started:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def latent_cache(run_dir: Path, images: Path, teacher: Path, image_size: int, make_adapter: Callable[[], Any],
                 log: Log, writer: bool = True, poll_s: float = 0.5) -> LatentCache:
    """`<run_dir>/latents/` for the image folder `images`, reused when its index matches, else made with
    `make_adapter()` (called only then). A replica that does not write (`writer` False) waits for the one that
    does."""
    directory = Path(run_dir) / CACHE_DIR
    key = cache_key(Path(images).absolute(), Path(teacher).absolute(), image_size)
    if index_matches(directory, key):
        log(f"latent cache: reusing {directory}")
        return load_cache(directory)
    if not writer:
        while not index_matches(directory, key):
            time.sleep(poll_s)
        return load_cache(directory)
    build_cache(directory, key, make_adapter(), log)
    return load_cache(directory, built=True)
