"""The reliability tables as data: bad inputs per CLI, fault-injection scenarios and security checks.

``tools/reliability.py`` runs every case as a subprocess of the repository's CLIs (``train.py``,
``search.py`` and its ``report``/``retrain`` modes, ``benchmark.py``, ``export.py``) and writes
``results/reliability.md``; ``tests/test_reliability.py`` asserts every case. This module needs only the
standard library (it never imports ``spsearch``), so a case is judged from the outside, as a user sees it.

A ``Case`` is a command line with placeholders (``{tmp}``: the case's own empty temporary folder, the
command's working directory; ``{out}``: ``{tmp}/out``; ``{root}``: the repository; ``{fmnist}``: the real
Fashion-MNIST folder), the files it needs (``files``: makers run in ``{tmp}`` first) and the expected
outcome. The default expectation is the bad-input contract: exit code 2, exactly one non-empty stderr line,
starting ``error: `` and containing ``match``, no ``Traceback`` anywhere, and nothing written under ``{tmp}``
(its tree, sizes and modification times are compared before and after). A fault scenario or a security
check with more to it than one command has a ``scenario``: a function of the case's folder that runs what
it needs and returns the problems it found (empty: the case passed).

Two sandboxes need the kernel's help. ``readonly``: ``{tmp}/ro`` is a read-only tmpfs when this process may
mount (root), else a folder of mode 0555 (which binds everyone but root). ``fulldisk``: ``{tmp}/full`` is a
256 KiB tmpfs when this process may mount (writes fail with ENOSPC), else an ordinary folder and the command
runs under ``RLIMIT_FSIZE`` of 256 KiB with SIGXFSZ ignored (writes fail with EFBIG). ``sandbox_kind()``
says which one this machine gets; the report records it.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FMNIST_DIRS = (Path('/usr/share/datasets/fashion-mnist'), ROOT / 'data' / 'fashion-mnist')
FULL_DISK_BYTES = 256 * 1024
"""The full-disk sandbox's size: a run's args.yaml fits, its first checkpoint (about 1 MB) does not."""

BAD_INPUT, FAULT, SECURITY = 'bad input', 'fault', 'security'
TABLES = (BAD_INPUT, FAULT, SECURITY)

Maker = Callable[[Path], None]


@dataclass(frozen=True)
class Result:
    """A finished command: exit code, both streams and its wall time in seconds."""
    code: int
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Case:
    """One row of a table. ``name`` is unique within the tables (it is the test id).

    Attributes:
        table: ``BAD_INPUT``, ``FAULT`` or ``SECURITY``.
        name: Short id, e.g. ``train-output-is-a-file``.
        cli: The script (``train.py``, ``search.py``, ``benchmark.py``, ``export.py``) or ``audit``.
        argv: The command's arguments, with placeholders (see the module docstring).
        what: One line: the input or fault, as the report shows it.
        files: Makers of the files the command needs, run in the case's folder before it.
        code: The expected exit code (2 bad input, 1 runtime failure, 130 Ctrl-C, 0 success).
        match: Text the one stderr line must contain (case-sensitive).
        prefix: How that line starts.
        writes_nothing: Whether the case's folder must be unchanged afterwards.
        sandbox: ``''``, ``'readonly'`` or ``'fulldisk'``.
        env: Extra environment variables.
        scenario: Replaces the single command: a function of the case's folder returning the problems.
        slow: Whether it takes more than a few seconds (the test marks it ``slow``).
        kind: The issue's fault kind (1-9) the case reproduces, for the report.
    """
    table: str
    name: str
    cli: str
    argv: tuple[str, ...] = ()
    what: str = ''
    files: tuple[Maker, ...] = ()
    code: int = 2
    match: str = ''
    prefix: str = 'error: '
    writes_nothing: bool = True
    sandbox: str = ''
    env: tuple[tuple[str, str], ...] = ()
    scenario: Callable[[Path], list[str]] | None = field(default=None, compare=False)
    slow: bool = False
    kind: int = 4


# -- running a command -------------------------------------------------------------------------------------------

def base_env(**extra: str) -> dict[str, str]:
    """The environment of every command: one thread each (two cores, sequential cases), the repository first on
    the path, no terminal-only progress, no GPU even where one exists (the tables are the CPU behaviour)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ACCELERATE_', 'PYTEST_'))}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='',
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]),
               MPLBACKEND='Agg', PYTHONWARNINGS='default')
    env.update(extra)
    return env


def expand(arg: str, tmp: Path) -> str:
    """Fill the placeholders of one argument."""
    return (arg.replace('{out}', str(tmp / 'out')).replace('{tmp}', str(tmp)).replace('{root}', str(ROOT))
            .replace('{fmnist}', str(fashion_mnist_dir())))


def command(cli: str, argv: Sequence[str], tmp: Path) -> list[str]:
    """The full command line of ``cli`` (a repository script) with ``argv`` expanded."""
    return [sys.executable, str(ROOT / cli), *(expand(a, tmp) for a in argv)]


def _fsize_limit() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an ignored signal stays ignored across exec: EFBIG, no kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_BYTES, FULL_DISK_BYTES))


PRELOAD = ('torch', 'timm', 'optuna', 'accelerate', 'yaml', 'numpy', 'timm_plugins', 'spsearch.train.cli',
           'spsearch.train.loop', 'spsearch.search.cli', 'spsearch.search.run', 'spsearch.export', 'onnx',
           'onnxruntime', 'matplotlib.pyplot')
"""What the fork server imports once, so that each case's process starts in milliseconds, not seconds."""


class ForkServer:
    """A clean Python process that imports ``PRELOAD`` once, then forks one child per command (as
    ``multiprocessing``'s forkserver does): the child takes the command's folder, environment, argv, file-size
    limit and its own session, runs the script as ``__main__`` and exits with the script's exit code; an uncaught
    exception prints its traceback as Python would. What a fresh interpreter would print while importing the
    preloaded libraries is not seen (``--fresh`` runs every command in its own interpreter instead).
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, '--fork-server'], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=base_env(), start_new_session=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready.strip() != 'ready':
            raise RuntimeError(f'the fork server did not start: {ready!r}')

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float, limit_file_size: bool) -> Result:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = dict(argv=argv, cwd=str(cwd), env=env, timeout=timeout, limit=limit_file_size)
        self.proc.stdin.write(json.dumps(request) + '\n')
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError('the fork server died')
        return Result(**json.loads(reply))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_SERVER: list[ForkServer] = []


@contextlib.contextmanager
def fork_server() -> Iterator[ForkServer]:
    """Within this block ``run`` forks its commands from one preloaded process."""
    server = ForkServer()
    _SERVER.append(server)
    try:
        yield server
    finally:
        _SERVER.remove(server)
        server.close()


def _serve() -> None:
    """The fork server's loop: one JSON request per stdin line, one JSON ``Result`` per stdout line."""
    import importlib
    import tempfile
    sys.path.insert(0, str(ROOT))
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    print('ready', flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory(prefix='reliability-streams-') as streams:
            out, err = Path(streams) / 'out', Path(streams) / 'err'
            start_time = time.monotonic()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out, err)
            code, timed_out = _wait(pid, request['timeout'])
            result = Result(code, out.read_text(errors='replace'), err.read_text(errors='replace')
                            + (f'\n(reliability: killed after {request["timeout"]:.0f} s)' if timed_out else ''),
                            time.monotonic() - start_time)
        print(json.dumps(result.__dict__), flush=True)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(0.02)


def _child(request: dict[str, object], out: Path, err: Path) -> None:
    """In the forked child: become the command and exit with its code (never returns)."""
    import runpy
    import traceback
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.stdin = open(os.devnull)
        os.chdir(str(request['cwd']))
        os.environ.clear()
        os.environ.update(request['env'])
        if request['limit']:
            _fsize_limit()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        argv = [str(a) for a in request['argv']]  # type: ignore[attr-defined]
        sys.argv = argv[1:]
        sys.path[0] = str(Path(argv[1]).parent)
        try:
            runpy.run_path(argv[1], run_name='__main__')
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 128 + signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(Exception):
            import logging
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def run(cli: str, argv: Sequence[str], tmp: Path, env: dict[str, str] | None = None, timeout: float = 300,
        limit_file_size: bool = False) -> Result:
    """Run ``cli argv`` in ``tmp`` and wait for it (killed after ``timeout`` s: exit code -9); forked from the fork
    server inside ``fork_server()``, else in a fresh interpreter."""
    if _SERVER:
        return _SERVER[-1].run(command(cli, argv, tmp), tmp, env or base_env(), timeout, limit_file_size)
    start = time.monotonic()
    proc = subprocess.Popen(command(cli, argv, tmp), cwd=tmp, env=env or base_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_fsize_limit if limit_file_size else None)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f'\n(reliability: killed after {timeout:.0f} s)'
    return Result(proc.returncode, out, err, time.monotonic() - start)


def start(cli: str, argv: Sequence[str], tmp: Path) -> subprocess.Popen[str]:
    """Start ``cli argv`` in ``tmp`` in its own session (a signal goes to it, not to this process's group)."""
    return subprocess.Popen(command(cli, argv, tmp), cwd=tmp, env=base_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 240) -> bool:
    """Poll ``predicate`` every 0.2 s while ``proc`` runs; whether it became true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> Result:
    """Wait for a started command (killing its group after ``timeout`` s) and collect its streams."""
    start_time = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return Result(proc.returncode, out, err, time.monotonic() - start_time)


# -- judging an outcome ------------------------------------------------------------------------------------------

def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_line_problems(result: Result, code: int, prefix: str = 'error: ', match: str = '') -> list[str]:
    """What breaks the one-line contract: the exit code, one stderr line with ``prefix`` and ``match``, no
    traceback on either stream."""
    problems = []
    if result.code != code:
        problems.append(f'exit {result.code}, expected {code}')
    if 'Traceback' in result.stderr or 'Traceback' in result.stdout:
        problems.append('a Traceback reached the user')
    err = lines_of(result.stderr)
    if len(err) != 1:
        problems.append(f'{len(err)} stderr lines, expected 1')
    if not err or not err[-1].startswith(prefix):
        problems.append(f'the last stderr line does not start with {prefix.strip()!r}')
    elif match and match not in err[-1]:
        problems.append(f'the line does not say {match!r}')
    return problems


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time (nanoseconds)."""
    out = {}
    for path in sorted(folder.rglob('*')):
        with contextlib.suppress(OSError):
            st = path.lstat()
            out[str(path.relative_to(folder))] = (st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return out


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Paths added, removed or modified between two snapshots (folders' own times ignored)."""
    names = sorted(set(before) ^ set(after)) + sorted(k for k in set(before) & set(after)
                                                       if before[k] != after[k] and before[k][0])
    return names


def first_line(result: Result) -> str:
    """What the user saw last on stderr (for the report), shortened."""
    err = lines_of(result.stderr)
    text = err[-1] if err else (lines_of(result.stdout) or [''])[-1]
    return text if len(text) <= 160 else text[:157] + '...'


# -- sandboxes ---------------------------------------------------------------------------------------------------

def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which('mount'):
        return False
    probe = Path(os.environ.get('TMPDIR', '/tmp')) / f'.reliability-probe-{os.getpid()}'
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(probe)], capture_output=True)
        if done.returncode == 0:
            subprocess.run(['umount', str(probe)], capture_output=True)
            return True
        return False
    finally:
        probe.rmdir()


_MOUNT: list[bool] = []


def sandbox_kind() -> dict[str, str]:
    """How this machine's read-only and full-disk sandboxes are made (the report states it)."""
    if not _MOUNT:
        _MOUNT.append(_can_mount())
    if _MOUNT[0]:
        return {'readonly': 'a read-only tmpfs (EROFS)', 'fulldisk': f'a {FULL_DISK_BYTES // 1024} KiB tmpfs (ENOSPC)'}
    return {'readonly': 'a folder of mode 0555 (EACCES; root bypasses it)',
            'fulldisk': f'RLIMIT_FSIZE {FULL_DISK_BYTES // 1024} KiB with SIGXFSZ ignored (EFBIG)'}


@contextlib.contextmanager
def sandbox(kind: str, tmp: Path) -> Iterator[bool]:
    """Set up ``kind`` in ``tmp``; yields whether the command must run under the file-size limit instead."""
    if not kind:
        yield False
        return
    sandbox_kind()
    where = tmp / ('ro' if kind == 'readonly' else 'full')
    where.mkdir()
    if _MOUNT[0]:
        opts = 'ro,size=64k' if kind == 'readonly' else f'size={FULL_DISK_BYTES}'
        subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(where)], check=True, capture_output=True)
        try:
            yield False
        finally:
            subprocess.run(['umount', '-l', str(where)], capture_output=True)
    elif kind == 'readonly':
        where.chmod(0o555)
        try:
            yield False
        finally:
            where.chmod(0o755)
    else:
        yield True


# -- file makers -------------------------------------------------------------------------------------------------

def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST folder (``make setup`` installs it)."""
    return next((d for d in FMNIST_DIRS if (d / 'train-labels-idx1-ubyte.gz').exists()), FMNIST_DIRS[0])


def text(name: str, content: str) -> Maker:
    """A maker of the text file ``name``."""
    def make(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content)
    return make


def random_bytes(name: str, size: int = 4096) -> Maker:
    """A maker of ``size`` seeded random bytes in ``name`` (a checkpoint, a data file, a study database)."""
    def make(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(random.Random(name).randbytes(size))
    return make


def folder(name: str) -> Maker:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir(parents=True, exist_ok=True)
    return make


def truncated_fashion_mnist(name: str = 'fm') -> Maker:
    """Fashion-MNIST whose training images file is cut in the middle of its pixels (a partial download)."""
    def make(tmp: Path) -> None:
        import gzip
        target = tmp / name
        target.mkdir()
        source = fashion_mnist_dir()
        for f in source.glob('*-ubyte.gz'):
            shutil.copy(f, target / f.name)
        with gzip.open(source / 'train-images-idx3-ubyte.gz', 'rb') as f:
            head = f.read(16 + 28 * 28 * 1000)
        with gzip.open(target / 'train-images-idx3-ubyte.gz', 'wb') as f:
            f.write(head)
    return make


def garbage_fashion_mnist(name: str = 'fm') -> Maker:
    """A Fashion-MNIST folder whose four files are not gzip at all."""
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()
        for stem in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
                     't10k-labels-idx1-ubyte'):
            random_bytes(f'{name}/{stem}.gz', 2048)(tmp)
    return make


CIFAR_BATCHES = ('data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch')


class _RunsCode:
    """Unpickling this calls ``os.system(command)``: what a crafted CIFAR batch does to a plain ``pickle.load``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def cifar(name: str = 'cifar-10-batches-py', crafted: str = '', garbage: bool = False) -> Maker:
    """A CIFAR-10 python folder: real-format batches (100 images each), with ``crafted`` (a batch file name, or
    ``batches.meta``) replaced by a pickle that touches ``PWNED`` in the case folder, or every file garbage."""
    def make(tmp: Path) -> None:
        target = tmp / name
        target.mkdir()
        rng = random.Random(0)
        for batch in CIFAR_BATCHES:
            data = {b'batch_label': batch.encode(), b'labels': [rng.randrange(10) for _ in range(100)],
                    b'data': _uint8_array(rng, (100, 3072)), b'filenames': [b'x.png'] * 100}
            (target / batch).write_bytes(b'\x80\x04\x95garbage' if garbage else pickle.dumps(data, protocol=2))
        meta = {b'label_names': [f'c{i}'.encode() for i in range(10)], b'num_cases_per_batch': 100}
        (target / 'batches.meta').write_bytes(b'\x80\x04\x95garbage' if garbage else pickle.dumps(meta, protocol=2))
        if crafted:
            (target / crafted).write_bytes(pickle.dumps(_RunsCode(f'touch {tmp / "PWNED"}'), protocol=2))
    return make


def _uint8_array(rng: random.Random, shape: tuple[int, int]) -> object:
    import numpy as np
    return np.frombuffer(rng.randbytes(shape[0] * shape[1]), dtype=np.uint8).reshape(shape)


def non_images(name: str = 'imgs') -> Maker:
    """An ImageFolder whose class folders hold only files that are not images."""
    def make(tmp: Path) -> None:
        for cls in ('a', 'b'):
            (tmp / name / 'train' / cls).mkdir(parents=True)
            (tmp / name / 'val' / cls).mkdir(parents=True)
            for split in ('train', 'val'):
                (tmp / name / split / cls / 'notes.txt').write_text('not an image\n')
                random_bytes(f'{name}/{split}/{cls}/x.png', 300)(tmp)
    return make


def fake_run(name: str = 'out') -> Maker:
    """A folder that looks like a finished run: a (random) last.pth and args.yaml."""
    def make(tmp: Path) -> None:
        random_bytes(f'{name}/last.pth', 2048)(tmp)
        text(f'{name}/args.yaml', 'model: sp_resnet20\ndataset: synthetic\nimg_size: 16\n')(tmp)
    return make


def journal(name: str, lines: Sequence[str]) -> Maker:
    return text(name, ''.join(line + '\n' for line in lines))


# -- the bad-input table -----------------------------------------------------------------------------------------

TRAIN = ('--dataset', 'synthetic', '--img-size', '16', '--train-samples', '64', '--val-samples', '32',
         '--batch-size', '32', '--epochs', '1', '--no-progress', '--workers', '0')
SEARCH = ('--model', 'sp_resnet20', '--dataset', 'synthetic', '--train-samples', '64', '--val-samples', '64',
          '--proxy-epochs', '1', '--batch-size', '32', '--proxy-img-size', '16', '--workers', '0',
          '--no-measure-latency', '--retrain-top', '0', '--no-progress', '--budget-gflops', '0.03', '--n-trials', '2')
BENCH = ('--model', 'sp_resnet20', '--baseline', 'none', '--batch-size', '2', '--warmup', '1', '--repeats', '1',
         '--no-memory', '--csv-dir', '{tmp}/bench')
EXPORT = ('--model', 'sp_resnet20',)


def _train(name: str, what: str, extra: Sequence[str], match: str = '', files: Sequence[Maker] = (),
           output: str = '{out}', **kw: object) -> Case:
    argv = (*TRAIN, *extra) + (('--output', output) if output else ())
    return Case(BAD_INPUT, f'train-{name}', 'train.py', argv, what, tuple(files), match=match, **kw)


def _search(name: str, what: str, extra: Sequence[str], match: str = '', files: Sequence[Maker] = (),
            output: str = '{out}', mode: Sequence[str] = (), **kw: object) -> Case:
    argv = (*mode, *SEARCH, *extra) + (('--output', output) if output else ())
    return Case(BAD_INPUT, f'search-{name}', 'search.py', argv, what, tuple(files), match=match, **kw)


def _bench(name: str, what: str, extra: Sequence[str], match: str = '', files: Sequence[Maker] = (),
           **kw: object) -> Case:
    return Case(BAD_INPUT, f'benchmark-{name}', 'benchmark.py', (*BENCH, *extra), what, tuple(files), match=match,
                **kw)


def _export(name: str, what: str, extra: Sequence[str], match: str = '', files: Sequence[Maker] = (),
            output: str = '{tmp}/m.onnx', **kw: object) -> Case:
    argv = (*extra,) + (('--output', output) if output else ())
    return Case(BAD_INPUT, f'export-{name}', 'export.py', argv, what, tuple(files), match=match, **kw)


BAD_INPUTS: list[Case] = [
    # train.py: data
    _train('missing-data-dir', 'cifar10 --data-dir that does not exist',
           ['--dataset', 'cifar10', '--data-dir', '{tmp}/nope'], 'nope'),
    _train('data-dir-is-a-file', '--data-dir naming a file', ['--dataset', 'cifar10', '--data-dir', '{tmp}/afile'],
           files=[text('afile', 'x')]),
    _train('empty-imagefolder', 'an empty ImageFolder', ['--dataset', 'imagefolder', '--data-dir', '{tmp}/empty'],
           files=[folder('empty')]),
    _train('imagefolder-without-images', 'an ImageFolder of text and random bytes named .png',
           ['--dataset', 'imagefolder', '--data-dir', '{tmp}/imgs', '--loader', 'torch'], files=[non_images()]),
    _train('garbage-cifar', 'CIFAR batches that are not pickles', ['--dataset', 'cifar10', '--data-dir',
                                                                      '{tmp}/cifar-10-batches-py'],
           'CIFAR batch', files=[cifar(garbage=True)], kind=1),
    _train('truncated-idx', 'Fashion-MNIST whose images file is cut short', ['--dataset', 'fashion-mnist',
                                                                              '--data-dir', '{tmp}/fm'],
           files=[truncated_fashion_mnist()]),
    _train('garbage-idx', 'Fashion-MNIST files that are random bytes', ['--dataset', 'fashion-mnist', '--data-dir',
                                                                         '{tmp}/fm'], files=[garbage_fashion_mnist()]),
    # train.py: config files and values
    _train('yaml-syntax', 'a config file that is not YAML', ['-c', '{tmp}/c.yaml'], 'not valid YAML',
           files=[text('c.yaml', 'model: [unclosed\n')]),
    _train('yaml-missing', '-c naming no file', ['-c', '{tmp}/none.yaml'], 'does not exist'),
    _train('yaml-not-a-mapping', 'a config file holding a list', ['-c', '{tmp}/c.yaml'], 'mapping',
           files=[text('c.yaml', '- a\n- b\n')]),
    _train('yaml-unknown-key', 'a config key that is no option', ['-c', '{tmp}/c.yaml'], 'unknown key',
           files=[text('c.yaml', 'modle: sp_resnet20\n')]),
    _train('yaml-seed-string', 'YAML seed: ten', ['-c', '{tmp}/c.yaml'], 'seed',
           files=[text('c.yaml', 'seed: ten\n')]),
    _train('yaml-lr-list', 'YAML lr: [1, 2]', ['-c', '{tmp}/c.yaml'], 'lr', files=[text('c.yaml', 'lr: [1, 2]\n')]),
    _train('yaml-output-list', 'YAML output: [a, b]', ['-c', '{tmp}/c.yaml'], 'output',
           files=[text('c.yaml', 'output: [a, b]\n')], output=''),
    _train('yaml-model-kwargs-list', 'YAML model_kwargs: [1, 2]', ['-c', '{tmp}/c.yaml'], 'model_kwargs',
           files=[text('c.yaml', 'model_kwargs: [1, 2]\n')]),
    _train('yaml-warmup-epochs-float', 'YAML warmup_epochs: 1.5', ['-c', '{tmp}/c.yaml'], 'warmup-epochs',
           files=[text('c.yaml', 'warmup_epochs: 1.5\n')]),
    _train('unknown-model', '--model sp_resnet21', ['--model', 'sp_resnet21'], 'sp_resnet21'),
    _train('bad-choice', '--dataset imagenet', ['--dataset', 'imagenet'], 'imagenet'),
    _train('model-kwargs-out-of-range', '--model-kwargs sp_alpha=1.5', ['--model-kwargs', 'sp_alpha=1.5']),
    _train('model-kwargs-no-equals', '--model-kwargs sp_alpha', ['--model-kwargs', 'sp_alpha'], 'key=value'),
    _train('img-size-zero', '--img-size 0', ['--img-size', '0'], 'img-size'),
    _train('img-size-negative', '--img-size -3', ['--img-size', '-3'], 'img-size'),
    _train('input-too-small', 'SP-VGG-16 at 8 px (fails in its first forward)',
           ['--model', 'sp_vgg16_cifar', '--img-size', '8'], 'cannot take 8x8'),
    _train('epochs-zero', '--epochs 0', ['--epochs', '0'], 'epochs'),
    _train('batch-size-zero', '--batch-size 0', ['--batch-size', '0'], 'batch-size'),
    _train('batch-larger-than-data', '--batch-size 128 with 64 training images', ['--batch-size', '128']),
    _train('lr-negative', '--lr -1', ['--lr', '-1'], 'lr'),
    _train('train-samples-zero', '--train-samples 0', ['--train-samples', '0'], 'train-samples'),
    _train('workers-negative', '--workers -1', ['--workers', '-1'], 'workers'),
    _train('mean-wrong-length', '--mean with 2 values for 3 channels', ['--mean', '0.5', '0.5'], 'mean'),
    _train('scale-reversed', '--scale 1 0.08', ['--dataset', 'imagefolder', '--data-dir', '{tmp}/empty', '--scale',
                                                '1', '0.08'], 'scale', files=[folder('empty')]),
    _train('nesterov-without-momentum', '--opt sgd (Nesterov) with --momentum 0', ['--momentum', '0'], 'momentum'),
    _train('fp16-on-cpu', '--mixed-precision fp16 without a GPU', ['--mixed-precision', 'fp16'], 'fp16'),
    _train('fp16-from-accelerate-env', 'ACCELERATE_MIXED_PRECISION=fp16 without a GPU', [], 'fp16',
           env=(('ACCELERATE_MIXED_PRECISION', 'fp16'),), kind=3),
    _train('amp-dtype-without-amp', '--amp-dtype bfloat16 without --amp', ['--amp-dtype', 'bfloat16'], '--amp'),
    # train.py: checkpoints and output folders
    _train('resume-without-output', '--resume without --output (it started a fresh run)', ['--resume'], '--output',
           output=''),
    _train('checkpoint-random-bytes', '--checkpoint holding random bytes', ['--checkpoint', '{tmp}/bad.pth'],
           'bad.pth', files=[random_bytes('bad.pth')]),
    _train('checkpoint-missing', '--checkpoint naming no file', ['--checkpoint', '{tmp}/none.pth'], 'none.pth'),
    _train('resume-random-bytes', '--resume a run whose last.pth is random bytes (a torn write)', ['--resume'],
           'last.pth', files=[fake_run()], writes_nothing=True),
    _train('existing-run', 'a new run in a folder holding one, without --resume', [], '--resume', files=[fake_run()]),
    _train('output-is-a-file', '--output naming a file', [], 'is a file', files=[text('afile', 'x')],
           output='{tmp}/afile'),
    _train('output-under-a-file', '--output under a file', [], 'lies under', files=[text('afile', 'x')],
           output='{tmp}/afile/run'),
    _train('output-read-only', '--output in a read-only folder', [], 'writ', output='{tmp}/ro/run',
           sandbox='readonly'),
    # search.py
    _search('budget-zero', '--budget-gflops 0', ['--budget-gflops', '0'], 'must be a number > 0'),
    _search('budget-negative', '--budget-params -1', ['--budget-params', '-1'], 'must be a number > 0'),
    _search('budget-below-space', '--budget-gflops 0.005 (below every configuration)', ['--budget-gflops', '0.005'],
            'below the minimum'),
    _search('unknown-model', '--model sp_resnet_nope', ['--model', 'sp_resnet_nope'], 'unknown model'),
    _search('empty-space', '--alphas 1/16 --groups 16 (no valid stage)', ['--alphas', '1/16', '--groups', '16'],
            'empty'),
    _search('bad-alpha', '--alphas 3', ['--alphas', '3'], 'alpha'),
    _search('groups-zero', '--groups 0', ['--groups', '0'], 'groups'),
    _search('n-trials-zero', '--n-trials 0', ['--n-trials', '0'], 'n-trials'),
    _search('holdout-zero', '--holdout 0 (selection on the test split)', ['--holdout', '0'], 'holdout'),
    _search('batch-larger-than-proxy', '--batch-size 128 with 64 proxy images', ['--batch-size', '128'],
            'batch'),
    _search('proxy-too-small', 'SP-VGG-16 proxy at 8 px', ['--model', 'sp_vgg16_cifar', '--budget-gflops', '0.3',
                                                            '--proxy-img-size', '8'], 'cannot take 8x8'),
    _search('latency-cuda-on-cpu', '--latency-device cuda without a GPU', ['--measure-latency', '--latency-device',
                                                                            'cuda'], 'cuda'),
    _search('missing-cifar', 'cifar10 --data-dir that does not exist', ['--dataset', 'cifar10', '--data-dir',
                                                                         '{tmp}/nope'], 'nope'),
    _search('truncated-idx', 'Fashion-MNIST cut short under --data-dir (a failed baseline and 36 lines)',
            ['--dataset', 'fashion-mnist', '--data-dir', '{tmp}/fm'], files=[truncated_fashion_mnist()]),
    _search('storage-unreachable', 'a PostgreSQL URL nobody listens at',
            ['--storage', 'postgresql://nobody@127.0.0.1:9/none'], 'cannot reach storage'),
    _search('storage-not-a-url', '--storage mystudy.txt', ['--storage', '{tmp}/mystudy.txt'], 'neither'),
    _search('storage-not-a-journal', '--storage FILE.log that is not a journal', ['--storage', '{tmp}/bad.log'],
            'not an Optuna journal', files=[text('bad.log', 'garbage{\n')]),
    _search('storage-random-sqlite', 'a study.db of random bytes', ['--resume'], 'study.db',
            files=[random_bytes('out/study.db', 8192)]),
    _search('resume-no-study', '--resume where no study is', ['--resume'], 'no study'),
    _search('yaml-storage-int', 'YAML storage: 5', ['-c', '{tmp}/c.yaml'], 'storage',
            files=[text('c.yaml', 'storage: 5\n')]),
    _search('yaml-output-list', 'YAML output: [a, b]', ['-c', '{tmp}/c.yaml'], 'output',
            files=[text('c.yaml', 'output: [a, b]\n')], output=''),
    _search('yaml-timeout-string', 'YAML timeout: soon', ['-c', '{tmp}/c.yaml'], 'timeout',
            files=[text('c.yaml', 'timeout: soon\n')]),
    _search('yaml-mode', 'a config file setting the mode', ['-c', '{tmp}/c.yaml'], 'unknown key',
            files=[text('c.yaml', 'mode: report\n')]),
    _search('output-is-a-file', '--output naming a file', [], 'is a file', files=[text('afile', 'x')],
            output='{tmp}/afile'),
    _search('output-under-a-file', '--output under a file', [], 'lies under', files=[text('afile', 'x')],
            output='{tmp}/afile/run'),
    _search('output-read-only', '--output in a read-only folder', [], 'writ', output='{tmp}/ro/run',
            sandbox='readonly'),
    _search('resume-masked-storage', '--resume from a search.yaml whose storage password was masked', ['--resume'],
            'password again', files=[text('out/search.yaml', 'budget_gflops: 2.0\nstorage: postgresql://u:***@h/db\n')],
            output='{out}'),
    _search('report-no-study', 'report where no study is', [], 'no study', mode=['report'], kind=3),
    _search('report-output-is-a-file', 'report --output naming a file', [], 'file', mode=['report'],
            files=[text('afile', 'x')], output='{tmp}/afile'),
    _search('report-storage-not-a-journal', 'report --storage FILE.log that is not a journal',
            ['--storage', '{tmp}/bad.log'], 'not an Optuna journal', mode=['report'],
            files=[text('bad.log', 'garbage{\n')]),
    _search('retrain-no-study', 'retrain where no study is', [], 'no study', mode=['retrain'], kind=3),
    _search('retrain-seeds-zero', 'retrain --retrain-seeds 0', ['--retrain-seeds', '0'], 'retrain-seeds',
            mode=['retrain']),
    # benchmark.py
    _bench('unknown-model', '--model no_such_model', ['--model', 'no_such_model'], 'unknown model'),
    _bench('model-kwargs-out-of-range', '--model-kwargs sp_alpha=2', ['--model-kwargs', 'sp_alpha=2'],
           'out of range'),
    _bench('batch-size-zero', '--batch-size 0', ['--batch-size', '0'], '--batch-size'),
    _bench('img-size-zero', '--img-size 0', ['--img-size', '0'], 'img-size'),
    _bench('repeats-zero', '--repeats 0', ['--repeats', '0'], 'repeats'),
    _bench('threads-zero', '--threads 0', ['--threads', '0'], 'threads'),
    _bench('device-tpu', '--device tpu', ['--device', 'tpu'], 'tpu'),
    _bench('device-cuda-without-gpu', '--device cuda:0 without a GPU', ['--device', 'cuda:0'], 'CUDA'),
    _bench('onnx-train', '--runtime onnxruntime --bench train', ['--runtime', 'onnxruntime', '--bench', 'train'],
           'drop --bench'),
    _bench('report-is-a-folder', '--report naming a folder', ['--report', '{tmp}/rep'], 'rep',
           files=[folder('rep')]),
    _bench('report-under-a-file', '--report under a file', ['--report', '{tmp}/afile/r.md'], 'afile',
           files=[text('afile', 'x')]),
    _bench('csv-dir-is-a-file', '--csv-dir naming a file', ['--csv-dir', '{tmp}/afile'], 'afile',
           files=[text('afile', 'x')]),
    # export.py
    _export('unknown-model', '--model no_such_model', ['--model', 'no_such_model'], 'unknown model'),
    _export('checkpoint-random-bytes', '--checkpoint holding random bytes', [*EXPORT, '--checkpoint', '{tmp}/bad.pth'],
            'cannot be read', files=[random_bytes('bad.pth')]),
    _export('checkpoint-missing', '--checkpoint naming no file', [*EXPORT, '--checkpoint', '{tmp}/none.pth'],
            'does not exist'),
    _export('run-without-args', '--checkpoint a folder without args.yaml', ['--checkpoint', '{tmp}/run'],
            'args.yaml', files=[folder('run')]),
    _export('run-bad-args-yaml', '--checkpoint a run whose args.yaml is not YAML', ['--checkpoint', '{tmp}/run'],
            'args.yaml', files=[text('run/args.yaml', 'model: [\n'), random_bytes('run/last.pth')]),
    _export('output-is-a-folder', '--output naming a folder', [*EXPORT], 'is a folder', output='{tmp}'),
    _export('output-not-onnx', '--output m.txt', [*EXPORT], '.onnx', output='{tmp}/m.txt'),
    _export('output-under-a-file', '--output under a file', [*EXPORT], 'writable', files=[text('afile', 'x')],
            output='{tmp}/afile/m.onnx'),
    _export('output-read-only', '--output in a read-only folder', [*EXPORT], 'writable', output='{tmp}/ro/m.onnx',
            sandbox='readonly'),
    _export('img-size-zero', '--img-size 0', [*EXPORT, '--img-size', '0'], '--img-size 0'),
    _export('num-classes-zero', '--num-classes 0', [*EXPORT, '--num-classes', '0'], 'num-classes'),
    _export('batch-size-zero', '--batch-size 0', [*EXPORT, '--batch-size', '0'], 'batch-size'),
    _export('opset-old', '--opset 9', [*EXPORT, '--opset', '9'], 'opset'),
    _export('tolerance-negative', '--tolerance -1', [*EXPORT, '--tolerance', '-1'], 'tolerance'),
]


# -- the fault-injection table -----------------------------------------------------------------------------------

LONG_TRAIN = ('--dataset', 'synthetic', '--img-size', '16', '--train-samples', '4096', '--val-samples', '64',
              '--batch-size', '32', '--epochs', '3', '--no-progress', '--workers', '0', '--output', '{out}')
SEARCH_N = 3
LONG_SEARCH = (*SEARCH[:-2], '--n-trials', str(SEARCH_N), '--train-samples', '1024', '--pruner', 'none',
               '--output', '{out}', '--study', 'faults')


def _epochs_done(out: Path) -> int:
    log = out / 'log.csv'
    return max(0, len(lines_of(log.read_text())) - 1) if log.exists() else 0


def _interrupt_train(tmp: Path, sig: int) -> tuple[Result | None, list[str]]:
    """Start a 3-epoch training, send ``sig`` once epoch 1 is saved; (its result, problems)."""
    out = tmp / 'out'
    return _interrupt(tmp, 'train.py', LONG_TRAIN, lambda: _epochs_done(out) >= 1, 'epoch 1 never finished', sig)


def _interrupt(tmp: Path, cli: str, argv: Sequence[str], ready: Callable[[], bool], not_ready: str, sig: int
               ) -> tuple[Result | None, list[str]]:
    """Start ``cli argv``, send ``sig`` half a second after ``ready()`` holds (kill -9 to its whole group);
    (its result, problems); ``not_ready`` says what never happened when it ends first."""
    proc = start(cli, argv, tmp)
    if not wait_until(ready, proc):
        result = finish(proc)
        return None, [f'{not_ready} (exit {result.code}: {first_line(result)})']
    time.sleep(0.5)
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    return finish(proc), []


def _resume(tmp: Path, cli: str, argv: Sequence[str]) -> list[str]:
    """Run ``cli argv --resume``: the problems of its exit code and stderr (more checks are the caller's)."""
    done = run(cli, (*argv, '--resume'), tmp)
    problems = [] if done.code == 0 else [f'--resume: exit {done.code} ({first_line(done)})']
    if 'Traceback' in done.stderr:
        problems.append('--resume: a Traceback reached the user')
    return problems


def _resumed_train(tmp: Path) -> list[str]:
    problems = _resume(tmp, 'train.py', LONG_TRAIN)
    if _epochs_done(tmp / 'out') != 3:
        problems.append(f'--resume left {_epochs_done(tmp / "out")} of 3 epochs in log.csv')
    return problems


def train_sigint(tmp: Path) -> list[str]:
    """Ctrl-C in epoch 2: exit 130, one line naming --resume; --resume finishes the 3 epochs."""
    result, problems = _interrupt_train(tmp, signal.SIGINT)
    if result is None:
        return problems
    problems += one_line_problems(result, 130, 'interrupted', '--resume')
    return problems + _resumed_train(tmp)


def train_kill9(tmp: Path) -> list[str]:
    """kill -9 in epoch 2: --resume finishes the 3 epochs from the last checkpoint."""
    result, problems = _interrupt_train(tmp, signal.SIGKILL)
    return problems + _resumed_train(tmp)


def _study_trials(tmp: Path) -> list[dict[str, object]]:
    """The trials of ``{out}/study.db`` read in a child process (number, state, baseline attribute)."""
    code = ('import json, optuna, sys; optuna.logging.set_verbosity(optuna.logging.ERROR); '
            's = optuna.load_study(study_name="faults", storage="sqlite:///" + sys.argv[1]); '
            'print(json.dumps([dict(number=t.number, state=t.state.name) for t in s.get_trials()]))')
    done = subprocess.run([sys.executable, '-c', code, str(tmp / 'out' / 'study.db')], capture_output=True,
                          text=True, env=base_env(), timeout=120)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []


def _interrupt_search(tmp: Path, sig: int) -> tuple[Result | None, list[str]]:
    """Start a 3-trial search, send ``sig`` once a trial finished (its reports exist); (its result, problems)."""
    out = tmp / 'out'
    return _interrupt(tmp, 'search.py', LONG_SEARCH, lambda: (out / 'trials.csv').exists(),
                      'no trial finished before the signal', sig)


def _resumed_search(tmp: Path) -> list[str]:
    problems = _resume(tmp, 'search.py', LONG_SEARCH)
    finished = [t for t in _study_trials(tmp) if t['state'] in ('COMPLETE', 'PRUNED')]
    if len(finished) != SEARCH_N:
        problems.append(f'{len(finished)} finished trials after --resume, expected {SEARCH_N}')
    if not (tmp / 'out' / 'summary.md').exists():
        problems.append('no summary.md after --resume')
    return problems


def search_sigint(tmp: Path) -> list[str]:
    """Ctrl-C after the first trial: exit 130, one line naming --resume, reports kept; --resume ends with n."""
    result, problems = _interrupt_search(tmp, signal.SIGINT)
    if result is None:
        return problems
    problems += one_line_problems(result, 130, 'interrupted', '--resume')
    if not (tmp / 'out' / 'summary.md').exists():
        problems.append('no summary.md after Ctrl-C')
    return problems + _resumed_search(tmp)


def search_kill9(tmp: Path) -> list[str]:
    """kill -9 after the first trial: trials.csv of what finished is there; --resume ends with exactly n trials."""
    result, problems = _interrupt_search(tmp, signal.SIGKILL)
    if result is None:
        return problems
    if not (tmp / 'out' / 'trials.csv').exists():
        problems.append('no trials.csv after kill -9')
    return problems + _resumed_search(tmp)


def _tiny_journal_study(tmp: Path) -> list[str]:
    done = run('search.py', (*SEARCH, '--output', '{out}', '--storage', '{tmp}/j.log', '--study', 'faults'), tmp)
    return [] if done.code == 0 else [f'the tiny journal search failed: exit {done.code} ({first_line(done)})']


def torn_journal_report(tmp: Path) -> list[str]:
    """A journal whose last line was cut by a crash: ``report`` works (Optuna skips the torn line) or is one
    line, and leaves the file as it was (a read-only command opens the storage read-only)."""
    problems = _tiny_journal_study(tmp)
    if problems:
        return problems
    journal_file = tmp / 'j.log'
    data = journal_file.read_bytes()
    journal_file.write_bytes(data + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "par')
    torn = journal_file.read_bytes()
    done = run('search.py', ('report', '--output', '{out}', '--storage', '{tmp}/j.log', '--study', 'faults'), tmp)
    if done.code != 0:
        problems += one_line_problems(done, 2, 'error: ', 'j.log')
    elif 'Traceback' in done.stderr:
        problems.append('a Traceback reached the user')
    if journal_file.read_bytes() != torn:
        problems.append('report changed the journal file')
    return problems


def journal_report_read_only(tmp: Path) -> list[str]:
    """``report`` on an intact journal appends nothing to it."""
    problems = _tiny_journal_study(tmp)
    if problems:
        return problems
    before = (tmp / 'j.log').read_bytes()
    done = run('search.py', ('report', '--output', '{out}', '--storage', '{tmp}/j.log', '--study', 'faults'), tmp)
    if done.code != 0:
        problems.append(f'report: exit {done.code} ({first_line(done)})')
    if (tmp / 'j.log').read_bytes() != before:
        problems.append(f'report appended {len((tmp / "j.log").read_bytes()) - len(before)} bytes to the journal')
    return problems


def _full_disk(cli: str, argv: Sequence[str]) -> Callable[[Path], list[str]]:
    def scenario(tmp: Path) -> list[str]:
        with sandbox('fulldisk', tmp) as limit:
            done = run(cli, argv, tmp, limit_file_size=limit)
        return one_line_problems(done, 1, 'error: ')
    scenario.__doc__ = f'{cli} writing to a full disk: exit 1, one line saying what to free; no traceback.'
    return scenario


def two_trains_one_output(tmp: Path) -> list[str]:
    """Two ``train.py`` on one new --output: one of them is refused (one line), never both exit 0."""
    argv = (*LONG_TRAIN[:-2], '--output', '{out}')
    first, second = start('train.py', argv, tmp), start('train.py', argv, tmp)
    a, b = finish(first, 300), finish(second, 300)
    if a.code == 0 and b.code == 0:
        return ['both exited 0: one run silently overwrote the other']
    refused = b if b.code else a
    return one_line_problems(refused, 2, 'error: ')


def search_killed_in_retrain(tmp: Path) -> list[str]:
    """kill -9 of search.py while it retrains a finalist: its train.py child does not live on."""
    retrain_top = SEARCH.index('--retrain-top')
    argv = (*SEARCH[:retrain_top], *SEARCH[retrain_top + 2:], '--retrain-top', '1', '--retrain-seeds', '1',
            '--retrain-epochs', '3', '--output', '{out}')
    proc = start('search.py', argv, tmp)

    def children() -> list[int]:
        found = []
        for stat in Path('/proc').glob('[0-9]*/cmdline'):
            with contextlib.suppress(OSError):
                cmd = stat.read_bytes().split(b'\0')
                if any(c.endswith(b'train.py') or b'spsearch.train' in c for c in cmd) and str(tmp).encode() in \
                        b' '.join(cmd):
                    found.append(int(stat.parent.name))
        return found
    if not wait_until(lambda: bool(children()), proc, 300):
        result = finish(proc)
        return [f'no retrain started (exit {result.code}: {first_line(result)})']
    proc.kill()  # the parent only, as an OOM killer or kill -9 PID does
    finish(proc)
    time.sleep(2)
    left = children()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f'{len(left)} orphaned train.py process(es) kept running'] if left else []


def journal_worker_killed(tmp: Path) -> list[str]:
    """Two workers of one study on a journal file, each with its own --output; kill -9 of one mid-trial: the
    survivor re-queues the lost trial and the study ends with exactly n finished trials, none left RUNNING."""
    journal_file = tmp / 'shared.log'
    n = 4

    def worker(name: str) -> subprocess.Popen[str]:
        argv = (*SEARCH[:-2], '--n-trials', str(n), '--train-samples', '1024', '--pruner', 'none', '--storage',
                str(journal_file), '--study', 'shared', '--output', f'{{tmp}}/{name}')
        return start('search.py', argv, tmp)
    first = worker('a')
    if not wait_until(lambda: (tmp / 'a' / 'trials.csv').exists(), first, 300):
        result = finish(first)
        return [f'the first worker finished no trial (exit {result.code}: {first_line(result)})']
    second = worker('b')
    time.sleep(3)  # both mid-trial
    first.kill()
    finish(first)
    survivor = finish(second, timeout=600)
    problems = [f'the survivor: exit {survivor.code} ({first_line(survivor)})'] if survivor.code != 0 else []
    if 'Traceback' in survivor.stderr:
        problems.append('a Traceback reached the user')
    code = ('import json, optuna, sys; optuna.logging.set_verbosity(optuna.logging.ERROR); '
            's = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage('
            'optuna.storages.journal.JournalFileBackend(sys.argv[1]))); '
            'print(json.dumps([t.state.name for t in s.get_trials()]))')
    done = subprocess.run([sys.executable, '-c', code, str(journal_file)], capture_output=True, text=True,
                          env=base_env(), timeout=120)
    states = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    finished = sum(s in ('COMPLETE', 'PRUNED') for s in states)
    if finished != n:
        problems.append(f'{finished} finished trials, expected {n} (states {states})')
    if 'RUNNING' in states:
        problems.append(f'{states.count("RUNNING")} trial(s) left RUNNING')
    return problems


FAULTS: list[Case] = [
    Case(FAULT, 'train-sigint', 'train.py', what='Ctrl-C (SIGINT) in epoch 2, then --resume', scenario=train_sigint,
         slow=True, kind=9),
    Case(FAULT, 'train-kill9', 'train.py', what='kill -9 in epoch 2, then --resume', scenario=train_kill9, slow=True,
         kind=9),
    Case(FAULT, 'search-sigint', 'search.py', what='Ctrl-C after the first trial, then --resume',
         scenario=search_sigint, slow=True, kind=9),
    Case(FAULT, 'search-kill9', 'search.py', what='kill -9 after the first trial, then --resume',
         scenario=search_kill9, slow=True, kind=9),
    Case(FAULT, 'report-torn-journal', 'search.py', what='report on a journal whose last line is torn',
         scenario=torn_journal_report, slow=True, kind=7),
    Case(FAULT, 'report-journal-read-only', 'search.py', what='report opens a journal without writing to it',
         scenario=journal_report_read_only, slow=True, kind=7),
    Case(FAULT, 'train-full-disk', 'train.py', what='training onto a full disk',
         scenario=_full_disk('train.py', (*TRAIN, '--output', '{tmp}/full/run')), slow=True),
    Case(FAULT, 'search-full-disk', 'search.py', what='a search onto a full disk',
         scenario=_full_disk('search.py', (*SEARCH, '--output', '{tmp}/full/run')), slow=True),
    Case(FAULT, 'export-full-disk', 'export.py', what='an export onto a full disk',
         scenario=_full_disk('export.py', ('--model', 'sp_resnet20', '--output', '{tmp}/full/m.onnx')), slow=True),
    Case(FAULT, 'two-trains-one-output', 'train.py', what='two train.py on one new --output at once',
         scenario=two_trains_one_output, slow=True, kind=6),
    Case(FAULT, 'search-killed-in-retrain', 'search.py', what='kill -9 of search.py during a retrain',
         scenario=search_killed_in_retrain, slow=True, kind=6),
    Case(FAULT, 'journal-worker-killed', 'search.py', what='kill -9 of one of two workers on a journal file',
         scenario=journal_worker_killed, slow=True, kind=6),
]


# -- the security table ------------------------------------------------------------------------------------------

SECRET = 's3cr3t-Pw'
SECRET_URLS = ('postgresql://user:{s}@127.0.0.1:9/db', 'postgresql://:{s}@127.0.0.1:9/db',
               'postgresql://127.0.0.1:9/db?user=u&password={s}', 'postgresql://u:p@{s}@127.0.0.1:9/db')


def _no_code_ran(crafted: str) -> Callable[[Path], list[str]]:
    def scenario(tmp: Path) -> list[str]:
        cifar(crafted=crafted)(tmp)
        done = run('train.py', (*TRAIN, '--dataset', 'cifar10', '--data-dir', '{tmp}/cifar-10-batches-py', '--output',
                                '{out}'), tmp)
        problems = ['the crafted pickle ran code (PWNED was created)'] if (tmp / 'PWNED').exists() else []
        return problems + one_line_problems(done, 2, 'error: ', crafted)
    scenario.__doc__ = f'A CIFAR folder whose {crafted} is a pickle that runs a command: refused, nothing runs.'
    return scenario


def secret_in_unreachable_storage(tmp: Path) -> list[str]:
    """A password in a storage URL nobody answers: the error line and everything written keep it masked."""
    problems = []
    for url in SECRET_URLS:
        done = run('search.py', (*SEARCH, '--output', '{out}', '--storage', url.format(s=SECRET)), tmp)
        if SECRET in done.stdout + done.stderr:
            problems.append(f'{url.format(s="PW")}: the password reached the terminal')
        problems += [f'{url.format(s="PW")}: {p}' for p in one_line_problems(done, 2)]
    leaked = [str(p.relative_to(tmp)) for p in tmp.rglob('*') if p.is_file() and SECRET.encode() in p.read_bytes()]
    return problems + ([f'the password is written in {", ".join(leaked)}'] if leaked else [])


def secret_in_written_reports(tmp: Path) -> list[str]:
    """A search on a storage URL with a password (SQLite ignores it): no report, study attribute or terminal
    line holds it."""
    url = f'sqlite:///{tmp}/st.db?password={SECRET}'
    done = run('search.py', (*SEARCH, '--output', '{out}', '--storage', url), tmp)
    problems = [] if done.code == 0 else [f'exit {done.code} ({first_line(done)})']
    if SECRET in done.stdout + done.stderr:
        problems.append('the password reached the terminal')
    leaked = [str(p.relative_to(tmp)) for p in tmp.rglob('*') if p.is_file() and SECRET.encode() in p.read_bytes()]
    if leaked:
        problems.append(f'the password is written in {", ".join(leaked)}')
    summary = tmp / 'out' / 'summary.md'
    commands = [line for line in summary.read_text().splitlines() if line.startswith('- Command: `')] \
        if summary.exists() else []
    try:
        for line in commands:
            shlex.split(line[len('- Command: `'):].rstrip('`'))
    except ValueError as e:
        problems.append(f'summary.md: the masked command line no longer parses as a shell line ({e})')
    return problems


def report_modes(tmp: Path) -> list[str]:
    """Files a run writes are readable by the group and others under umask 022 (not 0600) and writable by no
    other user; a summary's retrain hint quotes a path holding ``$(...)``."""
    out = tmp / 'run $(touch PWNED)'
    problems = []
    for cli, argv in (('train.py', (*TRAIN, '--output', str(out / 'train'))),
                      ('search.py', (*SEARCH, '--output', str(out / 'search')))):
        done = run(cli, argv, tmp, env=base_env())
        if done.code:
            problems.append(f'{cli}: exit {done.code} ({first_line(done)})')
    old = os.umask(0o022)
    os.umask(old)
    for path in sorted(p for p in out.rglob('*') if p.is_file()):
        mode = path.stat().st_mode & 0o777
        if mode & 0o002:
            problems.append(f'{path.relative_to(tmp)} is world-writable ({mode:o})')
        elif old == 0o022 and mode & 0o044 != 0o044:
            problems.append(f'{path.relative_to(tmp)} is mode {mode:o}, not readable under umask 022')
    summary = out / 'search' / 'summary.md'
    if summary.exists():
        hints = [line for line in summary.read_text().splitlines() if 'train.py -c' in line]
        if hints and not all("'" + str(out) in line for line in hints):
            problems.append('the retrain hint in summary.md does not quote its path')
    if (tmp / 'PWNED').exists():
        problems.append('a path ran a command')
    return problems


AUDITED = ('spsearch', 'timm_plugins', 'tools', 'benchmarks', 'scripts', 'train.py', 'search.py', 'benchmark.py',
           'export.py')
AUDIT_RULES: tuple[tuple[str, str, str], ...] = (
    ('torch-load-weights-only', r'torch\.load\((?![^)]*weights_only\s*=\s*True)',
     'torch.load without weights_only=True'),
    ('yaml-safe-load-only', r'yaml\.(?:load|unsafe_load|full_load)\(|Loader\s*=\s*yaml\.(?:Loader|UnsafeLoader)',
     'yaml.load / unsafe_load'),
    ('pickle-restricted-only', r'pickle\.loads?\(|pickle\.Unpickler\(',
     'pickle.load(s) outside the restricted CIFAR unpickler'),
    ('no-shell-or-eval', r'shell\s*=\s*True|(?<![.\w])(?:eval|exec)\(|os\.system\(',
     'shell=True, eval, exec or os.system'),
)


def _python_sources() -> list[Path]:
    files: list[Path] = []
    for name in AUDITED:
        path = ROOT / name
        files += sorted(path.rglob('*.py')) if path.is_dir() else [path] if path.suffix == '.py' else []
    return [f for f in files if f.name != Path(__file__).name]


def audit(rule: str) -> Callable[[Path], list[str]]:
    """A grep audit of the repository's Python (this module excluded: it holds the patterns and a crafted pickle)."""
    pattern, what = next((re.compile(p), w) for name, p, w in AUDIT_RULES if name == rule)

    def scenario(tmp: Path) -> list[str]:
        problems = []
        for path in _python_sources():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split('#', 1)[0]
                if pattern.search(code):
                    problems.append(f'{path.relative_to(ROOT)}:{number}: {what}')
        return problems
    scenario.__doc__ = f'No {what} in the repository\'s Python.'
    return scenario


SECURITY_CHECKS: list[Case] = [
    Case(SECURITY, 'crafted-pickle-batch', 'train.py', what='CIFAR data_batch_1 is a pickle that runs a command',
         scenario=_no_code_ran('data_batch_1'), kind=1),
    Case(SECURITY, 'crafted-pickle-meta', 'train.py', what='CIFAR batches.meta is a pickle that runs a command',
         scenario=_no_code_ran('batches.meta'), kind=1),
    Case(SECURITY, 'secret-unreachable-storage', 'search.py',
         what='storage passwords (user:pw, :pw, ?password=, pw with @) when the server is down',
         scenario=secret_in_unreachable_storage, slow=True, kind=2),
    Case(SECURITY, 'secret-in-reports', 'search.py', what='a storage URL password in search.yaml, summary.md, study',
         scenario=secret_in_written_reports, slow=True, kind=2),
    Case(SECURITY, 'file-modes-and-quoting', 'train.py, search.py',
         what='file modes of runs and reports; a $(...) path in the retrain hint', scenario=report_modes, slow=True,
         kind=9),
    *(Case(SECURITY, f'audit-{name}', 'audit', what=what, scenario=audit(name), kind=1)
      for name, _, what in AUDIT_RULES),
]

CASES: list[Case] = [*BAD_INPUTS, *FAULTS, *SECURITY_CHECKS]


def check(case: Case, tmp: Path) -> tuple[list[str], str, float]:
    """Run ``case`` in the empty folder ``tmp``: (problems, the line the user saw last, seconds)."""
    start_time = time.monotonic()
    if case.scenario is not None:
        problems = case.scenario(tmp)
        return problems, '', time.monotonic() - start_time
    for make in case.files:
        make(tmp)
    with sandbox(case.sandbox, tmp) as limit:
        before = snapshot(tmp)
        done = run(case.cli, case.argv, tmp, env=base_env(**dict(case.env)), limit_file_size=limit)
        after = snapshot(tmp)
    problems = one_line_problems(done, case.code, case.prefix, case.match)
    if case.writes_nothing:
        touched = changed(before, after)
        if touched:
            problems.append(f'wrote {", ".join(touched[:3])}' + (' ...' if len(touched) > 3 else ''))
    return problems, first_line(done), done.seconds


if __name__ == '__main__' and sys.argv[1:] == ['--fork-server']:
    _serve()
