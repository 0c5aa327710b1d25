"""A local OpenAI-compatible server for a model folder: ``transformers serve`` on a loopback port.

:class:`TransformersServer` starts ``transformers serve`` (transformers' own OpenAI-compatible server, its
``serving`` extra: ``pip install "transformers[serving]"``) in a process group of its own, waits until it answers
``/health``, and stops it (the whole group) on :meth:`~TransformersServer.stop` or at the end of a ``with``
block. Choose it to try :class:`~pyterrier_llmrank.OpenAIBackend` without a serving engine, and in the tests;
for throughput, serve the model with vLLM, SGLang or TGI instead (README, "Scaling out").
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, List, Optional

from pyterrier_llmrank import models

__all__ = ['TransformersServer', 'free_port']


def free_port(host: str = '127.0.0.1') -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TransformersServer:
    """``transformers serve`` for one model on ``127.0.0.1``, started and stopped by this object.

    Args:
        model: a short name (``smollm2-135m-instruct``), a local folder or a hub name; the server is pinned to it
            and knows it by :attr:`model` (the resolved path).
        port: TCP port (``None``: a free one).
        device, dtype: passed to ``transformers serve`` (``--device``, ``--dtype``).
        threads: CPU threads of the server's torch (``OMP_NUM_THREADS``; ``None``: torch's default). On a machine
            whose cores are shared with other processes, 1 avoids the slowdown of oversubscribed thread pools.
        startup_timeout: the most seconds to wait for ``/health`` before giving up (and stopping the process).
        extra_args: more command-line options for ``transformers serve``.

    Attributes:
        base_url: ``http://127.0.0.1:<port>/v1``, for :class:`~pyterrier_llmrank.OpenAIBackend`.
        model: the model name to send.
    """

    host = '127.0.0.1'

    def __init__(self, model: Any = 'smollm2-135m-instruct', *, port: Optional[int] = None, device: str = 'cpu',
                 dtype: str = 'float32', threads: Optional[int] = None, startup_timeout: float = 120.0,
                 extra_args: Optional[List[str]] = None) -> None:
        self.model = models.resolve_model_path(model)
        self.port = port or free_port(self.host)
        self.base_url = f'http://{self.host}:{self.port}/v1'
        self.device, self.dtype, self.threads = device, dtype, threads
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.process: Optional[subprocess.Popen] = None
        self._log: Any = None

    def command(self) -> List[str]:
        """The command line that starts the server."""
        exe = shutil.which('transformers', path=os.path.dirname(sys.executable)) or shutil.which('transformers')
        if exe is None:
            raise RuntimeError('TransformersServer: the `transformers` command is missing; '
                               'pip install "transformers[serving]"')
        return [exe, 'serve', self.model, '--host', self.host, '--port', str(self.port), '--device', self.device,
                '--dtype', self.dtype, '--log-level', 'warning', *self.extra_args]

    def healthy(self) -> bool:
        """Whether the server answers ``/health`` now."""
        try:
            with urllib.request.urlopen(f'http://{self.host}:{self.port}/health', timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        """What the server wrote so far (stdout and stderr)."""
        if self._log is None:
            return ''
        self._log.flush()
        with open(self._log.name, encoding='utf-8', errors='replace') as f:
            return f.read()

    def start(self, wait: bool = True) -> 'TransformersServer':
        """Start the server; with ``wait``, also :meth:`wait` until it answers."""
        if self.process is not None:
            return self.wait() if wait else self
        self._log = tempfile.NamedTemporaryFile('w+', prefix='transformers-serve-', suffix='.log', delete=False)
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get('HF_HUB_OFFLINE', '1'))
        if self.threads is not None:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        return self.wait() if wait else self

    def wait(self) -> 'TransformersServer':
        """Wait (at most ``startup_timeout`` seconds from now) until the started server answers ``/health``;
        stop it and raise a ``RuntimeError`` with its log when it exits or does not answer in time."""
        if self.process is None:
            raise RuntimeError('TransformersServer.wait: the server is not started; call start() first')
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                log = self.log()
                self.stop()
                raise RuntimeError(f'TransformersServer: `transformers serve {self.model}` exited with code {code} '
                                   f'before answering:\n{log[-3000:]}')
            if self.healthy():
                return self
            time.sleep(0.5)
        log = self.log()
        self.stop()
        raise RuntimeError(f'TransformersServer: no answer from {self.base_url} within {self.startup_timeout:g} s:\n'
                           f'{log[-3000:]}')

    def stop(self) -> None:
        """Stop the server's whole process group (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> 'TransformersServer':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f'TransformersServer({self.model!r}, base_url={self.base_url!r})'
