"""Become a container: run as root inside the pod's network namespace (``ip netns exec``), then, in a private
mount namespace, make the whole tree read-only (what ``readOnlyRootFilesystem`` does), mount the pod's declared
volumes (the only writable places), and exec the container's command as its user with no capabilities, no
privilege escalation and exactly its resolved environment.

Usage: ``python -P enter.py SPEC.json`` (SPEC written by tests/k8s/pods.py). Imports nothing of the project."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000
# Kernel file systems the runtime gives every container (writable /dev/shm included): never made read-only.
KEPT = ("/proc", "/sys", "/dev")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {source} {target}")


def mount_points() -> list[tuple[str, set[str]]]:
    """(mount point, its per-mount options) of this mount namespace, in mount order."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        points.append((point, set(fields[5].split(","))))
    return points


def _flags(options: set[str]) -> int:
    names = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    return sum(flag for name, flag in names.items() if name in options)


def make_tree_read_only() -> None:
    for point, options in mount_points():
        if "ro" in options or any(point == k or point.startswith(k + "/") for k in KEPT):
            continue
        mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags(options))


class Shadows:
    """Creates a volume's mount point that the image lacks without writing to this machine: the deepest existing
    ancestor is covered by a tmpfs whose entries are bind mounts of the originals, and the point is made there
    (for "/" itself: a new root built so in ``scratch``, entered with chroot)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.ours: set[Path] = set()  # folders on our tmpfs: a mount point may be made in them

    def ensure(self, target: Path, is_file: bool) -> None:
        if target.exists():
            return
        ancestor = target.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if ancestor not in self.ours:
            self._shadow(ancestor)
        for folder in reversed([p for p in target.parents if not p.exists()]):
            folder.mkdir()
            self.ours.add(folder)
        if is_file:
            target.touch()
        else:
            target.mkdir()
            self.ours.add(target)

    def _shadow(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        entries = os.listdir(fd)
        cover = self.scratch if folder == Path("/") else folder
        mount("tmpfs", str(cover), "tmpfs", 0, "mode=0755")
        for name in entries:
            original = f"/proc/self/fd/{fd}/{name}"
            placeholder = cover / name
            if os.path.islink(original):
                os.symlink(os.readlink(original), placeholder)
                continue
            if os.path.isdir(original):
                placeholder.mkdir()
            elif os.path.isfile(original):
                placeholder.touch()
            else:
                continue
            mount(original, str(placeholder), None, MS_BIND | MS_REC)
        if folder == Path("/"):
            os.chroot(cover)
            os.chdir("/")
        self.ours.add(folder)


def expose(path: Path) -> None:
    """Let any user reach ``path`` whose parent only root may enter: the parent is covered by a tmpfs holding just
    ``path`` (bind-mounted); nothing else of the parent is visible."""
    fd = os.open(path, os.O_PATH)
    mount("tmpfs", str(path.parent), "tmpfs", 0, "mode=0755")
    (path.mkdir() if os.path.isdir(f"/proc/self/fd/{fd}") else path.touch())
    mount(f"/proc/self/fd/{fd}", str(path), None, MS_BIND | MS_REC)


def image_user(uid: int, gid: int, line: str | None) -> None:
    """Give /etc/passwd the image's user (the Dockerfile's ``useradd``), as the image has it."""
    if line is None:
        return
    staging = Path("/dev/shm") / f"tessera-passwd-{os.getpid()}"
    passwd = Path("/etc/passwd").read_text()
    if not any(entry.split(":")[2:3] == [str(uid)] for entry in passwd.splitlines()):
        passwd += line + "\n"
    staging.write_text(passwd)
    mount(str(staging), "/etc/passwd", None, MS_BIND)
    staging.unlink()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path in spec.get("expose", []):
        expose(Path(path))
    shadows = Shadows(Path(spec["scratch"]))
    mounts = sorted(spec["mounts"], key=lambda m: m["target"].count("/"))
    under_volume = set()
    for m in mounts:
        target = Path(m["target"])
        if not any(Path(o["target"]) in target.parents for o in mounts):
            shadows.ensure(target, m["file"])
        else:
            under_volume.add(m["target"])
    workdir = Path(spec["workdir"])
    shadows.ensure(workdir, is_file=False)
    image_user(spec["uid"], spec["gid"], spec.get("passwd_line"))
    # Hold every source before the first mount: a volume at /tmp would hide sources that live under /tmp.
    sources = {m["target"]: os.open(m["source"], os.O_PATH) for m in mounts}
    # The same for the image's own files (this checkout and its venv): in the image they sit outside every volume,
    # here a clone under /tmp would vanish beneath the pod's /tmp volume.
    image_files = {path: os.open(path, os.O_PATH) for path in spec.get("image_paths", [])}
    make_tree_read_only()
    for m in mounts:
        target = Path(m["target"])
        if m["target"] in under_volume and not target.exists():
            target.touch() if m["file"] else target.mkdir(parents=True)
        mount(f"/proc/self/fd/{sources[m['target']]}", m["target"], None, MS_BIND)
        # A bind mount copies its source mount's flags (read-only by now): set the volume's own.
        read_only = MS_RDONLY if m["read_only"] else 0
        mount(None, m["target"], None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | read_only)
    for path, fd in image_files.items():
        if any(Path(m["target"]) in Path(path).parents for m in mounts):  # hidden by a volume: show it again
            Path(path).mkdir(parents=True, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chdir(workdir)
    groups = ",".join(str(g) for g in spec["groups"]) if spec["groups"] else None
    setpriv = ["setpriv", f"--reuid={spec['uid']}", f"--regid={spec['gid']}"]
    setpriv += [f"--groups={groups}"] if groups else ["--clear-groups"]
    if spec["no_new_privs"]:
        setpriv.append("--no-new-privs")
    if spec["drop_all_capabilities"]:
        setpriv += ["--inh-caps=-all", "--bounding-set=-all"]
    os.execve("/usr/bin/setpriv", [*setpriv, "--", *spec["argv"]], spec["env"])


if __name__ == "__main__":
    main()
