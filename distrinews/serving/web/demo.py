"""The Gradio demo at ``/`` (presentation only): classify a text, a pasted list or a CSV, explain a prediction.

Three named API endpoints, one per action, are what ``gradio_client`` sees (``Client(url).view_api()``):
``/classify`` (text -> label probabilities, and the "Given" line: the labels given, or "not sure" under the
confidence floor), ``/classify_many`` (lines, CSV -> table with an ``abstained`` column, CSV file) and ``/explain``
(text -> part weights, and a line saying what was read). The other events (Enter in the text box, the Explain tab's
label, the model summary) are private. The Batch tab writes its result CSV straight into the demo's Gradio cache,
so there is one copy, and ``delete_cache`` removes it, and every upload, ``UI_FILES_TTL_S`` seconds later.

Every handler cuts a text to ``MAX_TEXT_CHARS`` before anything else, and cleans, counts and tokenizes in a thread,
so one visitor's long article never holds up the event loop every route shares. A Batch-tab job is refused whole
over ``BATCH_TAB_LIMIT`` texts or ``BATCH_TAB_MAX_WINDOWS`` windows, and otherwise runs as pieces within a request's
window budget, waiting for a busy queue rather than failing. Errors reach the visitor as short messages; their
detail goes to the log.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ...core.errors import InferenceFailed, QueueFull, RequestTooLarge, TextError
from ...core.predict import Prediction
from ...core.texts import check_text, clean_text
from ..explain import ExplainUnavailable
from ..service import ClassifierService, texts_from_csv
from .errors import printable
from .json_api import EXAMPLES
from .state import ServingState

log = logging.getLogger("distrinews.app")

BATCH_TAB_LIMIT = 2000  # texts per Batch-tab job
BATCH_TAB_MAX_WINDOWS = 4000  # windows per Batch-tab job (a headline needs one, a long article up to MAX_WINDOWS)
# Waits before each retry of a Batch-tab piece that found the queue full: doubling, 20 s in all, then give up.
BUSY_WAITS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula (OWASP)
PRIVATE = {"api_visibility": "private"}  # an event the page uses that is no API endpoint
USER_MESSAGES = {  # what a visitor is told for each way a request can fail; the error's own text is logged
    TextError: "Type a headline first.",
    QueueFull: "The server is busy; try again in a few seconds.",
    RequestTooLarge: "That is more text than the server reads at once; send less.",
    ExplainUnavailable: "Explain is not available for this model (its tokenizer gives no word positions).",
    InferenceFailed: "The model failed on this text; the error is logged for the maintainers.",
}


def user_message(error: BaseException) -> str:
    return next((text for kind, text in USER_MESSAGES.items() if isinstance(error, kind)),
                USER_MESSAGES[InferenceFailed])


class Demo:
    """The demo's event handlers over one app's state."""

    def __init__(self, state: ServingState):
        self.state = state
        self.cache_dir: Path | None = None  # the Blocks' GRADIO_CACHE, set once it is built

    def service(self) -> ClassifierService:
        if self.state.service is None:
            raise gr.Error(self.state.unavailable().message)
        return self.state.service

    def model_summary(self) -> str:
        if self.state.service is None:
            return f"**Model:** {self.state.unavailable().message}"
        info = self.state.service.info()
        accuracy = self.state.service.test_accuracy()
        accuracy_text = f"{accuracy:.2%}" if accuracy is not None else "not in the model card"
        return (f"**Model:** `{info['model_id']}` · **revision** `{info['resolved_revision'][:12]}` · "
                f"**test accuracy** {accuracy_text} · **backend** {info['quantization']}\n\n"
                f"**Labels** ({info['problem_type'].replace('_', ' ')}{thresholds_text(info)}): "
                f"{', '.join(info['labels'])}{floor_text(info)}")

    async def classify(self, text: str) -> tuple[dict[str, float], str]:
        """The probability of every label for one text (a headline or a whole article), and the line saying what
        the model gives for it (``given_line``), both from the one prediction the API would answer with."""
        prediction = await self._call(lambda service: predict_one(service, text))
        return prediction.probabilities, given_line(prediction)

    async def scores(self, text: str) -> dict[str, float]:
        """The probability of every label for one text."""
        return (await self._call(lambda service: predict_one(service, text))).probabilities

    async def explain(self, text: str) -> tuple[list[tuple[str, float | None]], str]:
        """Each part of the text's first window with how much it pushed the prediction (leave-one-part-out,
        ``distrinews.serving.explain``), scaled to [-1, 1], and a line saying what was read."""
        explanation = await self._call(lambda service: service.explain(text or ""))
        return explanation.highlighted(), explanation.summary()

    async def classify_many(self, lines: str, upload: str | None, progress=gr.Progress()):
        """One text per line, or a CSV upload: a table of predictions and the same as a CSV file."""
        async def classify_job(service: ClassifierService):
            texts = await asyncio.to_thread(self._batch_texts, service, lines or "", upload)
            job = batch_job(service, texts, await service.count_windows(texts))
            return job, await self._predict_in_pieces(service, job, progress)

        job, predictions = await self._call(classify_job)
        labels = self.state.service.labels
        header = ["text", "label", "score", "labels", *labels, "truncated", "abstained", "confidence"]
        rows = [[text, p.label, round(p.score, 4), "; ".join(p.labels),
                 *(round(p.probabilities[name], 4) for name in labels), p.truncated, p.abstained,
                 round(p.confidence, 4)]
                for text, p in zip(job.texts, predictions)]
        return gr.update(value=rows, headers=header), self._write_result_csv([header, *rows])

    def _batch_texts(self, service: ClassifierService, lines: str, upload: str | None) -> list[str]:
        """The texts of a Batch-tab job, cut and cleaned; refused whole over the tab's text limits. Runs in a
        thread: it reads and cleans every text."""
        config = service.config
        if len(lines) > config.max_text_chars:
            raise gr.Error(f"The pasted lines hold {len(lines):,} characters; at most {config.max_text_chars:,}. "
                           "Upload a CSV for more.")
        try:
            texts = texts_from_csv(upload, BATCH_TAB_LIMIT) if upload else lines.splitlines()
        except (ValueError, OSError) as err:
            raise gr.Error(f"Cannot read the file: {printable(str(err))}") from None
        # What the model reads, and safe to show and to save as UTF-8; blank lines are skipped.
        texts = [cleaned for cleaned in (clean_text(text[:config.max_text_chars]) for text in texts) if cleaned]
        if not texts:
            raise gr.Error("Paste one text per line, or upload a CSV.")
        if len(texts) > BATCH_TAB_LIMIT:
            raise gr.Error(f"{len(texts):,} texts; at most {BATCH_TAB_LIMIT:,} at once.")
        return texts

    async def _predict_in_pieces(self, service: ClassifierService, job: "BatchJob", progress) -> list[Prediction]:
        """Predictions for the job's texts, a request-sized piece at a time so that it shares the queue with API
        callers; a busy queue is waited for (``predict_when_free``). When it stays busy, or a piece fails, the
        pieces done so far are kept and the visitor is told."""
        predictions: list[Prediction] = []
        for piece in pieces_of(job.windows, service.config.window_budget, service.config.max_texts_per_request):
            progress((len(predictions), len(job.texts)), desc="Classifying", unit="texts")
            try:
                predictions += await predict_when_free(service, [job.texts[i] for i in piece])
            except (QueueFull, InferenceFailed, RequestTooLarge) as err:
                log.warning("Batch tab stopped after %d of %d texts: %s", len(predictions), len(job.texts), err)
                if not predictions:
                    raise gr.Error(user_message(err)) from None
                gr.Warning(f"Classified the first {len(predictions):,} of {len(job.texts):,} texts only. "
                           f"{user_message(err)}")
                break
        return predictions

    def _write_result_csv(self, rows: list[list]) -> str:
        # Inside the Blocks' own cache, Gradio serves the file as it is instead of copying it, and its
        # delete_cache schedule removes it; a file in the temp folder was copied and never removed.
        folder = self.cache_dir / f"distrinews-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        path = folder / "predictions.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([[spreadsheet_safe(cell) for cell in row] for row in rows])
        return str(path)

    async def _call(self, call):
        """``await call(service)``, with every way it can fail shown to the visitor as a short message (the
        detail goes to the log), never as the error's own text."""
        service = self.service()
        try:
            return await call(service)
        except gr.Error:
            raise
        except tuple(USER_MESSAGES) as err:
            log.info("demo request refused: %s: %s", type(err).__name__, printable(str(err)))
            raise gr.Error(user_message(err)) from None
        except Exception as err:  # noqa: BLE001 - a bug: logged whole; the visitor gets a message, not its text
            log.exception("demo request failed")
            raise gr.Error(user_message(err)) from None


def thresholds_text(info: dict) -> str:
    """How a multi-label model gives labels: one threshold for all, or each label's own."""
    thresholds = info["thresholds"]
    if thresholds is None:
        return ""
    if len(set(thresholds.values())) == 1:
        return f", labels given at probability >= {info['threshold']:g}"
    return ", each label given at or above its threshold: " + ", ".join(
        f"{name} {value:g}" for name, value in thresholds.items())


def floor_text(info: dict) -> str:
    floor = info["min_confidence"]
    if floor is None:
        return ""
    return f"\n\n**Not sure** under confidence {floor:g} ({info['min_confidence_source']})"


async def predict_one(service: ClassifierService, text: str) -> Prediction:
    cleaned = await asyncio.to_thread(check_text, (text or "")[:service.config.max_text_chars])
    (prediction,) = await service.predict([cleaned])
    return prediction


def given_line(prediction: Prediction) -> str:
    """What the model gives, as the API says it: its label (single-label), every label at or above its threshold
    (multi-label), or "not sure" with its confidence, the floor and its best guess."""
    given = ", ".join(prediction.labels) or "no label (none reaches its threshold)"
    if prediction.abstained:
        return (f"**Given:** not sure (confidence {prediction.confidence:.1%} is under the floor of "
                f"{prediction.min_confidence:.1%}; best guess: {given})")
    return f"**Given:** {given}"


@dataclass
class BatchJob:
    texts: list[str]  # cleaned
    windows: list[int]  # windows each text needs


def batch_job(service: ClassifierService, texts: list[str], windows: list[int]) -> "BatchJob":
    """A Batch-tab job of ``texts`` needing ``windows`` each, refused whole over the tab's window limits."""
    config = service.config
    if sum(windows) > BATCH_TAB_MAX_WINDOWS:
        raise gr.Error(f"These {len(texts):,} texts need {sum(windows):,} windows of {service.max_length} tokens "
                       f"(a headline needs one); the Batch tab reads at most {BATCH_TAB_MAX_WINDOWS:,} at once. "
                       "Split the file.")
    longest = max(range(len(texts)), key=windows.__getitem__)
    if windows[longest] > config.window_budget:
        raise gr.Error(f"Text {longest + 1} needs {windows[longest]} windows of {service.max_length} tokens; "
                       f"this server reads at most {config.window_budget} at once.")
    return BatchJob(texts, windows)


def pieces_of(windows: list[int], budget: int, max_texts: int) -> list[range]:
    """Consecutive runs of texts, each within ``budget`` windows and ``max_texts`` texts (a text over the
    budget alone is a piece of its own)."""
    pieces, start, used = [], 0, 0
    for index, count in enumerate(windows):
        if index > start and (used + count > budget or index - start == max_texts):
            pieces.append(range(start, index))
            start, used = index, 0
        used += count
    return [*pieces, range(start, len(windows))] if windows else pieces


async def predict_when_free(service: ClassifierService, texts: list[str]) -> list[Prediction]:
    """``service.predict(texts)``, waiting and trying again while the queue is full (``BUSY_WAITS_S``), then
    raising the last ``QueueFull``."""
    for wait in BUSY_WAITS_S:
        try:
            return await service.predict(texts)
        except QueueFull:
            await asyncio.sleep(wait)
    return await service.predict(texts)


def spreadsheet_safe(cell):
    """A CSV cell that a spreadsheet will not run: text starting with a formula character gets a leading ``'``
    (OWASP's advice for CSV injection), numbers stay numbers."""
    return f"'{cell}" if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell


def build_demo(state: ServingState, files_ttl_s: int) -> gr.Blocks:
    """The demo's page; files it writes or receives are deleted ``files_ttl_s`` seconds later."""
    demo = Demo(state)
    max_chars = state.config.max_text_chars
    with gr.Blocks(title="DistriNews: news topic classifier", analytics_enabled=False,
                   delete_cache=(max(1, files_ttl_s // 2), files_ttl_s)) as blocks:
        gr.Markdown("# DistriNews\nClassify a headline or a whole article with the model below: the labels it "
                    "gives and every label's probability.")
        summary = gr.Markdown("**Model:** loading…")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    headline = gr.Textbox(label="Headline or article", lines=3, elem_id="headline",
                                          placeholder="Paste a news headline, or a whole article…",
                                          max_length=max_chars)
                    run = gr.Button("Classify", variant="primary", elem_id="classify")
                    gr.Examples(EXAMPLES, inputs=headline)
                with gr.Column():
                    label = gr.Label(label="Scores", elem_id="topic")  # every label: a multi-label model gives any
                    given = gr.Markdown(elem_id="given")
            run.click(demo.classify, headline, [label, given], api_name="classify")
            headline.submit(demo.classify, headline, [label, given], **PRIVATE)
        with gr.Tab("Batch"):
            lines = gr.Textbox(label="One text per line", lines=8, max_length=max_chars)
            gr.Markdown(f"At most {BATCH_TAB_LIMIT:,} texts and {BATCH_TAB_MAX_WINDOWS:,} windows of the model's "
                        "length (a headline needs one, a long article several) at once.")
            upload = gr.File(label="…or a CSV (a 'text' column, or AG News class,title,description rows)",
                             file_types=[".csv"], type="filepath")
            run_many = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(label="Predictions", interactive=False, wrap=True)
            download = gr.File(label="Download as CSV")
            run_many.click(demo.classify_many, [lines, upload], [table, download], api_name="classify_many")
        with gr.Tab("Explain"):
            gr.Markdown("Which words pushed the prediction? Each word (each token, in scripts written without "
                        "spaces) of the text's first window is left out in turn (one batch of variants); red "
                        "words pushed towards the predicted topic, purple ones away from it.")
            explain_text = gr.Textbox(label="Headline", lines=3, value=EXAMPLES[3], max_length=max_chars)
            run_explain = gr.Button("Explain", variant="primary")
            explain_label = gr.Label(num_top_classes=4, label="Topic")
            highlighted = gr.HighlightedText(label="Word influence", combine_adjacent=False, show_legend=True)
            explained = gr.Markdown()
            run_explain.click(demo.explain, explain_text, [highlighted, explained], api_name="explain")
            run_explain.click(demo.scores, explain_text, explain_label, **PRIVATE)
        blocks.load(demo.model_summary, None, summary, **PRIVATE)
    demo.cache_dir = Path(blocks.GRADIO_CACHE)
    return blocks
