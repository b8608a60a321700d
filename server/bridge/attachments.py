"""Images and documents for the remote model: read, checked and typed before anything is sent.

Each entry of ``images`` or ``files`` is a local path (read by this server, only inside
``KEY4U_FILE_ROOTS``: by default the user's home and the current directory, symlinks resolved first,
so none escapes), an ``https://`` URL (passed by reference: this server never fetches it), a
``data:`` URI, or a downstream MCP server's resource, ``mcp:<server>:<uri>`` (the bridge reads it and
hands it here as a data: URI). The type is sniffed from the content, never taken from a name: PNG, JPEG, GIF and WebP
images; PDF and UTF-8 text documents. Sizes are checked before reading (a 2 GB file is refused from
its size), then per file, per request and in count. An image above the limit is scaled down when
Pillow is installed (the ``[images]`` extra), else refused with that advice. Every failure is a
``ToolError`` that names the entry and the fix, raised before any request to the gateway.

Images that local or downstream tools return (MCP ``ImageContent``) go back to the model the same
way, within the same limits (``tool_images``).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent

from server.upstream.model import Attachment

#: ``mcp:<server>:<uri>``: a resource of a downstream MCP server, read by the bridge through the hub.
RESOURCE_PREFIX = "mcp:"
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 48 * 1024 * 1024
MAX_COUNT = 10
#: The longest side of a scaled-down image.
SCALED_SIDE = 2048
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


@dataclass(frozen=True)
class Limits:
    roots: tuple[Path, ...]
    image_bytes: int = MAX_IMAGE_BYTES
    file_bytes: int = MAX_FILE_BYTES
    total_bytes: int = MAX_TOTAL_BYTES
    count: int = MAX_COUNT

    def read_bound(self, kind: str) -> int:
        """The most bytes read of one entry: an image may be up to 8 times the limit, to be scaled down."""
        return self.image_bytes * 8 if kind == "image" else self.file_bytes

    @classmethod
    def of(cls, roots: Sequence[Path] | None) -> Limits:
        chosen = list(roots) if roots else [Path.home(), Path.cwd()]
        return cls(tuple(Path(os.path.realpath(r.expanduser())) for r in chosen))


def sniff(data: bytes) -> str | None:
    """The MIME type the content says it is (of those accepted), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if b"\x00" not in data[:8192]:
        try:
            data[: 64 * 1024].decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(data[: 64 * 1024]) - 4:  # not just a character cut at the sample's end
                return None
        return "text/plain"
    return None


def load(images: Sequence[str], files: Sequence[str], limits: Limits) -> list[Attachment]:
    """Every entry read and checked, images first; a ``ToolError`` for the first that is not fine."""
    for kind, entries in (("images", images), ("files", files)):
        if len(entries) > limits.count:
            raise ToolError(f"{kind}: at most {limits.count} entries per call, not {len(entries)}")
    loaded = [_one(entry, "image", limits) for entry in images]
    loaded += [_one(entry, "file", limits) for entry in files]
    total = sum(a.size for a in loaded)
    if total > limits.total_bytes:
        raise ToolError(
            f"images and files add up to {_mb(total)}, more than {_mb(limits.total_bytes)} per call: send fewer"
        )
    return loaded


def _one(entry: str, kind: str, limits: Limits) -> Attachment:
    shown = entry if len(entry) <= 120 else entry[:60] + "…"
    if entry.startswith("data:"):
        return _typed(_data_uri(entry, kind, limits), kind, f"the data: URI {shown[:40]}…", limits, name=None)
    if entry.startswith(("https://", "http://")):
        return _url(entry, kind)
    if "://" in entry[:12]:
        raise ToolError(f"{shown}: only local paths, https:// URLs and data: URIs are accepted")
    path = _inside_roots(entry, limits)
    limit = limits.read_bound(kind)
    try:
        size = path.stat().st_size
        if size > limit:
            raise ToolError(f"{path}: {_mb(size)} is too large (at most {_mb(limit)})")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ToolError(f"{shown}: cannot be read ({exc.strerror or exc})") from exc
    return _typed(data, kind, str(path), limits, name=path.name)


def _inside_roots(entry: str, limits: Limits) -> Path:
    path = Path(entry).expanduser()
    resolved = Path(os.path.realpath(path))  # symlinks followed first: none leads out of the roots
    if not any(resolved == root or root in resolved.parents for root in limits.roots):
        roots = ", ".join(str(r) for r in limits.roots)
        raise ToolError(f"{entry}: outside the folders this server may read ({roots}); see KEY4U_FILE_ROOTS")
    if not resolved.exists():
        raise ToolError(f"{entry}: no such file")
    if not resolved.is_file():
        raise ToolError(f"{entry}: not a file")
    return resolved


def _data_uri(entry: str, kind: str, limits: Limits) -> bytes:
    header, sep, payload = entry.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ToolError("a data: URI must be data:<type>;base64,<data>")
    limit = limits.read_bound(kind)
    if len(payload) * 3 // 4 > limit:
        raise ToolError(f"a data: URI of about {_mb(len(payload) * 3 // 4)} is too large (at most {_mb(limit)})")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ToolError(f"a data: URI whose base64 does not decode ({exc})") from exc
    return data


def _url(entry: str, kind: str) -> Attachment:
    parts = urlsplit(entry)
    if parts.scheme != "https" or not parts.hostname:
        raise ToolError(f"{entry}: only https:// URLs are passed on")
    suffix = Path(parts.path).suffix.lower()
    if kind == "image":
        return Attachment(kind="image", mime=_IMAGE_TYPES.get(suffix, "image/*"), url=entry)
    mime = "application/pdf" if suffix == ".pdf" else "application/octet-stream"
    return Attachment(kind="file", mime=mime, url=entry, name=Path(parts.path).name or None)


def _typed(data: bytes, kind: str, where: str, limits: Limits, *, name: str | None) -> Attachment:
    """The content as sent, its type as sniffed (a data: URI's declared type, like a file's name, is not
    believed)."""
    mime = sniff(data)
    if kind == "image":
        if mime is None or not mime.startswith("image/"):
            found = f"it holds {mime}" if mime else "its content is no image type accepted"
            raise ToolError(f"{where}: not a PNG, JPEG, GIF or WebP image ({found})")
        if len(data) > limits.image_bytes:
            data, mime = _scaled_down(data, where, limits)
    else:
        if mime is None or mime.startswith("image/"):
            hint = "send images in images" if mime else "PDF and UTF-8 text are accepted"
            raise ToolError(f"{where}: not a document this server sends ({hint})")
        if len(data) > limits.file_bytes:
            raise ToolError(f"{where}: {_mb(len(data))} is too large (at most {_mb(limits.file_bytes)})")
    return Attachment(
        kind="image" if kind == "image" else "file",
        mime=mime,
        name=name or ("document.pdf" if mime == "application/pdf" else None),
        data=base64.b64encode(data).decode("ascii"),
        size=len(data),
    )


def _scaled_down(data: bytes, where: str, limits: Limits) -> tuple[bytes, str]:
    try:
        from PIL import Image
    except ImportError:
        raise ToolError(
            f"{where}: {_mb(len(data))} is larger than {_mb(limits.image_bytes)}; install key4u-mcp[images] "
            "(Pillow) to have it scaled down, or send a smaller image"
        ) from None
    try:
        image: Any = Image.open(io.BytesIO(data))  # Pillow's own types are partial
        with image:
            image.thumbnail((SCALED_SIDE, SCALED_SIDE))
            out = io.BytesIO()
            if image.mode in ("RGBA", "LA", "P"):
                image.save(out, format="PNG", optimize=True)
                mime = "image/png"
            else:
                image.convert("RGB").save(out, format="JPEG", quality=85)
                mime = "image/jpeg"
    except Exception as exc:  # a damaged image that sniffs fine
        raise ToolError(f"{where}: the image could not be read to scale it down ({exc})") from exc
    scaled = out.getvalue()
    if len(scaled) > limits.image_bytes:
        raise ToolError(f"{where}: still {_mb(len(scaled))} after scaling down; send a smaller image")
    return scaled, mime


def tool_images(result: CallToolResult, budget: int) -> list[Attachment]:
    """The images a tool returned, for the model's next turn: those that sniff as images, within ``budget``
    bytes in all (the rest are named in the call's output only)."""
    found: list[Attachment] = []
    for block in result.content:
        if not isinstance(block, ImageContent):
            continue
        try:
            data = base64.b64decode(block.data, validate=True)
        except (binascii.Error, ValueError):
            continue
        mime = sniff(data)
        if mime is None or not mime.startswith("image/") or len(data) > min(MAX_IMAGE_BYTES, budget):
            continue
        budget -= len(data)
        found.append(Attachment(kind="image", mime=mime, data=base64.b64encode(data).decode("ascii"), size=len(data)))
    return found


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


__all__ = ["Limits", "load", "sniff", "tool_images"]
