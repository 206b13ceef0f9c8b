"""The rules for a generation's inputs, checked before any work (web/src/inputs.js applies the
same rules in the page). Each error names the option and what is allowed."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

# Exactly what torch.Generator.manual_seed accepts (diffusers seeds through it): a negative seed
# means seed + 2^64.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class InputError(ValueError):
    """A generation input out of its range; the message names the option."""


def check_seed(seed: int) -> int:
    if not SEED_MIN <= seed <= SEED_MAX:
        raise InputError(f"--seed {seed}: must be an integer from {SEED_MIN} to {SEED_MAX} (2^64 - 1)")
    return seed


def check_guidance(guidance: float) -> float:
    if not math.isfinite(guidance):
        raise InputError(f"--guidance {guidance}: must be a finite number (at most 1 turns classifier-free guidance off)")
    return guidance


def check_steps(steps: int, scheduler: str, most: int) -> int:
    if not 1 <= steps <= most:
        raise InputError(f"--steps {steps}: {scheduler} plans 1 to {most} steps for this model")
    return steps


def check_output(path: Path) -> Path:
    """Refuse an image path that cannot be written, before the image is made: an unknown image
    format, a folder, a parent that is a file, or a folder this process cannot write to."""
    from PIL import Image

    if path.is_dir():
        raise InputError(f"--out {path}: is a folder")
    if path.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"--out {path}: unknown image format {path.suffix!r} (e.g. .png, .jpg, .webp)")
    existing = path.parent
    while not existing.exists():  # the folders to be made are made in the first existing one
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {path}: {existing} is not a folder")
    try:  # write access as the file system decides it (read-only mounts, ACLs, root or not)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".websd-write-test-")
    except OSError as error:
        raise InputError(f"--out {path}: cannot write in {existing} ({error.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path
