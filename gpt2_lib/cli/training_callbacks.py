"""`finetune`'s callbacks: progress, validation, metrics and checkpoints at steps; Ctrl-C.

Ctrl-C (SIGINT) and SIGTERM during `fit()` do not raise in the middle of
Keras: `StopSignals` only records them, and `FinetuneMonitor` stops training
at the end of the current step, after writing a checkpoint. Raising
KeyboardInterrupt inside `fit()` does not work reliably: Keras converts the
logs of every step with `keras.src.utils.python_utils.pythonify_logs`, whose
bare `except:` around `float(value)` swallows a KeyboardInterrupt raised
while it waits for the step's result (on JAX the main thread spends most of
its time there, so Ctrl-C was lost and training ran to the end).
A second Ctrl-C ends the process at once (the last checkpoint stays).
"""

import math
import os
import signal
import sys
import threading
import time

import keras

from gpt2_lib.cli.metrics_record import perplexity
from gpt2_lib.utils import distribution as dist


class StopSignals:
    """Context manager: SIGINT/SIGTERM set `received` instead of raising.

    A second signal restores the default action and re-sends itself, which
    ends the process immediately.

    With several processes (`keras.distribution.initialize()`) a signal is
    only noted when it arrives; `synchronize()`, called by every process at
    the end of each step, makes `received` the same everywhere (so that
    every process stops, and validates or checkpoints, at the same step).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self._noted = None
        self._previous = {}
        self._shared = dist.process_count() > 1

    def _handle(self, signum, frame):
        if self.received is not None or self._noted is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self._shared:
            self._noted = signum
        else:
            self.received = signum

    def synchronize(self):
        """Several processes: `received` is set everywhere once any process got a signal."""
        if not self._shared or self.received is not None:
            return
        if not dist.all_agree(self._noted is None):
            self.received = self._noted or signal.SIGTERM

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    """A live `keras.utils.Progbar` on a terminal; plain periodic lines otherwise.

    Args:
        total_steps: the step the run ends at.
        start_step: the step it starts from (after a resume).
        log_every: steps between plain lines (not on a terminal).
        stream: where to write (default `sys.stdout`).
    """

    def __init__(self, total_steps, start_step, log_every, stream=None):
        self.stream = stream or sys.stdout
        self.total_steps = total_steps
        self.start_step = start_step
        self.log_every = log_every
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        if self.live:
            self._bar = keras.utils.Progbar(
                total_steps - start_step, unit_name="step",
                stateful_metrics=["loss", "tokens/s", "epoch"],
            )

    def update(self, step, epoch, loss, tokens_per_second, elapsed):
        if self._bar is not None:
            self._bar.update(
                step - self.start_step,
                values=[("epoch", epoch), ("loss", loss), ("tokens/s", tokens_per_second)],
            )
            return
        if step % self.log_every and step != self.total_steps:
            return
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done else 0.0
        self.line(
            f"step {step}/{self.total_steps}  epoch {epoch:.2f}  loss {loss:.4f}  "
            f"tokens/s {tokens_per_second:,.0f}  elapsed {_clock(elapsed)}  eta {_clock(eta)}"
        )

    def line(self, text):
        if self.live:
            text = "\n" + text  # below the bar
        print(text, file=self.stream, flush=True)


class FinetuneMonitor(keras.callbacks.Callback):
    """Step bookkeeping for `gpt2-lib finetune`.

    At the end of each step: the mean training loss since the last row,
    real tokens per second, the progress display, validation every
    `eval_every` steps (and at epoch ends), a metrics row every `log_every`
    steps, and a checkpoint every `save_every` steps, at epoch ends and when
    a stop signal arrived (then training stops).

    Keras' batch logs hold the loss averaged over the run so far (weighted
    by batch rows); the loss of an interval is recovered exactly from two
    such averages and the rows in between. The values are also put in the
    logs (`train_loss`, `val_loss`, `tokens_per_second`) for the callbacks
    after this one (TensorBoard).

    Args:
        batches: the run's `TrainingBatches`.
        record: a `MetricsRecord` (continued after a resume).
        checkpoint: a `Checkpoint`, or None.
        signals: a `StopSignals`.
        validate: None, or a function `(model, should_stop) -> loss or None`.
        display: a `ProgressDisplay`.
        save_every, eval_every, log_every: step intervals (eval_every None:
            validation at epoch ends only).
        extra_record: function returning extra JSON for the checkpoint.
        resumed: what the checkpoint recorded before (`tokens`, `seconds`), so
            the metrics' `tokens` and `elapsed_seconds` continue across a resume.
    """

    def __init__(self, batches, record, checkpoint, signals, validate, display,
                 save_every, eval_every, log_every, extra_record, resumed=None):
        super().__init__()
        self.batches = batches
        self.record = record
        self.checkpoint = checkpoint
        self.signals = signals
        self.validate = validate
        self.display = display
        self.save_every = save_every
        self.eval_every = eval_every
        self.log_every = log_every
        self.extra_record = extra_record
        self.step = batches.start_step
        self.stopped_by = None
        self.tokens = 0  # real tokens trained on in this run
        self.eval_seconds = 0.0
        resumed = resumed or {}
        self.tokens_before = int(resumed.get("tokens", 0))
        self.seconds_before = float(resumed.get("seconds", 0.0))

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._rows = 0  # batch rows in this run, as Keras' loss average weights them
        self._loss_sum = 0.0
        self._last = (0, 0.0)  # (rows, loss sum) at the last metrics row

    def elapsed(self):
        return time.perf_counter() - self._start

    def _train_loss_since_last_row(self):
        rows, loss_sum = self._last
        if self._rows == rows:
            return None
        return (self._loss_sum - loss_sum) / (self._rows - rows)

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.checkpoint.resume_generator()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        self.signals.synchronize()
        step = self.batches.start_step + batch + 1
        self.step = step
        self._rows += self.batches.batch_rows(step - 1)
        self.tokens += self.batches.real_tokens(step - 1)
        running_loss = float(logs.get("loss", math.nan))
        self._loss_sum = running_loss * self._rows
        epoch = step / self.batches.steps_per_epoch
        train_seconds = max(self.elapsed() - self.eval_seconds, 1e-9)
        tokens_per_second = self.tokens / train_seconds
        interval_loss = self._train_loss_since_last_row()
        logs["tokens_per_second"] = tokens_per_second
        self.display.update(step, epoch, interval_loss if interval_loss is not None else running_loss,
                            tokens_per_second, self.elapsed())

        end_of_epoch = step % self.batches.steps_per_epoch == 0
        last = step == self.batches.total_steps
        if step % self.log_every == 0 or end_of_epoch or last:
            self.record.add(
                step, epoch=round(epoch, 4), train_loss=interval_loss,
                tokens=self.tokens_before + self.tokens,
                elapsed_seconds=round(self.seconds_before + self.elapsed(), 2),
                learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            )
            self._last = (self._rows, self._loss_sum)
            if interval_loss is not None:
                logs["train_loss"] = interval_loss
        if self.validate is not None and self.signals.received is None and (
            end_of_epoch or last or (self.eval_every and step % self.eval_every == 0)
        ):
            loss = self.run_validation(self.model)
            if loss is not None:
                self.record.add(step, epoch=round(epoch, 4), val_loss=loss)
                logs["val_loss"] = loss
                self.display.line(
                    f"validation at step {step}: loss {loss:.4f}, perplexity {perplexity(loss):.2f}"
                )
        # A signal during the last step: training is complete, finish normally.
        stop = self.signals.received is not None and not last
        if self.checkpoint is not None and not last and (
            stop or end_of_epoch or step % self.save_every == 0
        ):
            self.save_checkpoint(self.model, step)
        if stop:
            self.stopped_by = self.signals.received
            self.model.stop_training = True

    def run_validation(self, model):
        start = time.perf_counter()
        try:
            return self.validate(model, lambda: self.signals.received is not None)
        finally:
            self.eval_seconds += time.perf_counter() - start

    def save_checkpoint(self, model, step):
        record = {
            "rows": self.record.rows,
            "tokens": self.tokens_before + self.tokens,
            "seconds": self.seconds_before + self.elapsed(),
            **self.extra_record(),
        }
        self.checkpoint.save(model, step, record)
        self.checkpoint.write_file("metrics.csv", self.record.csv_text())


class StepTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, counting batches from the run's first step.

    Keras numbers batch summaries from 0 in every `fit()`; a resumed run
    starts at its checkpoint's step instead, so the curves continue.

    Args:
        log_dir: the TensorBoard log folder.
        start_step: the step the run starts from.
    """

    def __init__(self, log_dir, start_step):
        super().__init__(log_dir=log_dir, update_freq=1, write_graph=False)
        self.start_step = start_step

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._global_train_batch = self.start_step
