"""What the tools write: the cached image, its compressed files with their manifests, and a bmap,
built when missing.

The formats (`formats` of prepare_artifacts; the single-frame zstd file is always built):
  zst     X.img.zst, `zstd -T0 -3`: one frame, which only one core can decompress
  packed  X.packed.img.zst, `bty images pack`: independent 2 MiB frames (still plain zstd)
  xz      X.img.xz, `xz -T0 -3`: -3, not xz's default -6, to keep the build short (-6 takes
          several times as long for a few percent); with -T0 xz writes independent blocks, which
          `xz -dc -T0` (5.4 and later; bty runs it too) decompresses on every core
  gz      X.img.gz, `pigz -6` when installed, else `gzip -6` (Debian's gzip is single-threaded;
          decompression is single-threaded either way)
  qcow2   X.qcow2, `qemu-img convert -O qcow2 -c`: compressed clusters, as cloud images ship
Each compressed file gets its bty manifest (`bty images add FILE` writes FILE.toml).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.benchkit.output import step
from tools.benchkit.procs import run_quiet
from tools.mkdiskimage import MIB, build_disk_image

READ_CHUNK = 4 << 20


@dataclass(frozen=True)
class Artifacts:
    image: Path
    zst: Path
    manifest: Path
    bmap: Path
    image_size: int
    zst_size: int
    build_seconds: dict[str, float]  # only for what was (re)built this time
    packed: Path | None = None  # multi-frame zstd from `bty images pack`
    packed_size: int = 0
    qcow2: Path | None = None  # `qemu-img convert -O qcow2 -c`: compressed clusters, as cloud images ship
    qcow2_size: int = 0
    xz: Path | None = None  # `xz -T0 -3`
    xz_size: int = 0
    gz: Path | None = None  # `pigz -6` or `gzip -6` (gz_tool says which)
    gz_size: int = 0
    gz_tool: str = "gzip"


#: what prepare_artifacts builds unless told otherwise (what tools/bench_tui.py needs, and the
#: bench before xz and gz)
DEFAULT_FORMATS = ("zst", "packed", "qcow2")


def gzip_tool() -> str:
    """pigz when installed (compresses on every core), else gzip."""
    return "pigz" if shutil.which("pigz") else "gzip"


def prepare_artifacts(out_dir: Path, size: int, fill: float, bty: Path, rebuild: bool,
                      formats: Collection[str] = DEFAULT_FORMATS) -> Artifacts:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{size // MIB}M-fill{round(fill * 100)}"
    image = out_dir / f"{stem}.img"
    zst = out_dir / f"{stem}.img.zst"
    manifest = out_dir / f"{stem}.img.zst.toml"
    bmap = out_dir / f"{stem}.img.bmap"
    built: dict[str, float] = {}
    if rebuild or not image.exists():
        for stale in out_dir.glob(f"{stem}.*"):  # the image and everything made from it
            stale.unlink()
        step(f"building {image.name}: {size / MIB:.0f} MiB GPT + ESP + ext4 {fill:.0%} full of host files")
        info = build_disk_image(image, size, fill=fill)
        built["image"] = info.build_seconds
        print(f"    {info.file_count} files, {info.data_bytes / MIB:.0f} MiB of data, "
              f"built in {info.build_seconds:.1f} s")
    else:
        step(f"using cached {image}")
    if not zst.exists():
        manifest.unlink(missing_ok=True)
        step(f"compressing: zstd -T0 -3 {image.name}")
        built["zstd"] = timed(lambda: compress(image, zst))
    if not bmap.exists():
        step(f"bmaptool create {image.name} > {bmap.name}")
        partial = bmap.with_name(f".{bmap.name}.partial")
        built["bmap"] = timed(lambda: run_quiet(["bmaptool", "create", str(image)], stdout=partial))
        os.replace(partial, bmap)
    if not manifest.exists():
        step(f"bty images add {zst.name}")
        try:
            built["manifest"] = timed(lambda: run_quiet([str(bty), "images", "add", str(zst)]))
        except (RuntimeError, OSError) as exc:
            print(f"    WARNING: no manifest: {exc}", flush=True)
    packed = out_dir / f"{stem}.packed.img.zst"
    if "packed" in formats and (not packed.exists() or not packed.with_name(packed.name + ".toml").exists()):
        step(f"bty images pack {image.name} -o {packed.name}")
        try:
            built["pack"] = timed(lambda: run_quiet([str(bty), "images", "pack", str(image), "-o", str(packed)]))
        except (RuntimeError, OSError) as exc:
            print(f"    WARNING: no packed image: {exc}", flush=True)
    qcow2 = out_dir / f"{stem}.qcow2"
    if "qcow2" in formats and (not qcow2.exists() or not qcow2.with_name(qcow2.name + ".toml").exists()):
        step(f"qemu-img convert -O qcow2 -c {image.name} {qcow2.name}; bty images add {qcow2.name}")
        partial = qcow2.with_name(f".{qcow2.name}.partial")
        try:
            built["qcow2"] = timed(lambda: run_quiet(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c",
                                                      str(image), str(partial)]))
            os.replace(partial, qcow2)
            built["qcow2 manifest"] = timed(lambda: run_quiet([str(bty), "images", "add", str(qcow2)]))
        except (RuntimeError, OSError) as exc:
            print(f"    WARNING: no qcow2 image: {exc}", flush=True)
    xz = out_dir / f"{stem}.img.xz"
    if "xz" in formats:
        built |= compressed_with_manifest(image, xz, ["xz", "-T0", "-3", "-k", "-c", "-q"], bty)
    gz_tool = gzip_tool()
    gz = out_dir / f"{stem}.img.gz"
    if "gz" in formats:
        built |= compressed_with_manifest(image, gz, [gz_tool, "-6", "-c"], bty)
    return Artifacts(image=image, zst=zst, manifest=manifest, bmap=bmap, image_size=image.stat().st_size,
                     zst_size=zst.stat().st_size, build_seconds=built,
                     packed=packed if packed.exists() else None,
                     packed_size=packed.stat().st_size if packed.exists() else 0,
                     qcow2=qcow2 if qcow2.exists() else None,
                     qcow2_size=qcow2.stat().st_size if qcow2.exists() else 0,
                     xz=xz if xz.exists() else None, xz_size=xz.stat().st_size if xz.exists() else 0,
                     gz=gz if gz.exists() else None, gz_size=gz.stat().st_size if gz.exists() else 0,
                     gz_tool=gz_tool)


def compressed_with_manifest(image: Path, out: Path, argv: list[str], bty: Path) -> dict[str, float]:
    """`argv IMAGE > OUT` and `bty images add OUT`, each when its output is missing; build times."""
    built: dict[str, float] = {}
    manifest = out.with_name(out.name + ".toml")
    if not out.exists():
        manifest.unlink(missing_ok=True)
        step(f"compressing: {' '.join(argv)} {image.name} > {out.name}")
        partial = out.with_name(f".{out.name}.partial")
        try:
            built[argv[0]] = timed(lambda: run_quiet([*argv, str(image)], stdout=partial))
            os.replace(partial, out)
        except (RuntimeError, OSError) as exc:
            partial.unlink(missing_ok=True)
            print(f"    WARNING: no {out.name}: {exc}", flush=True)
            return built
    if not manifest.exists():
        step(f"bty images add {out.name}")
        try:
            built[f"{argv[0]} manifest"] = timed(lambda: run_quiet([str(bty), "images", "add", str(out)]))
        except (RuntimeError, OSError) as exc:
            print(f"    WARNING: no manifest for {out.name}: {exc}", flush=True)
    return built


def compress(image: Path, zst: Path) -> None:
    partial = zst.with_name(f".{zst.name}.partial")
    run_quiet(["zstd", "-T0", "-3", "-q", "-f", str(image), "-o", str(partial)])
    os.replace(partial, zst)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def warm(paths: Sequence[Path]) -> None:
    """Read the sources once so every tool starts with them in the page cache."""
    buf = bytearray(READ_CHUNK)
    for path in paths:
        if path.exists():
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
