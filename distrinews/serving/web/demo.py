"""The Gradio demo at ``/`` (presentation only): classify a text, a pasted list or a CSV, explain a prediction.

Three named API endpoints, one per action, are what ``gradio_client`` sees (``Client(url).view_api()``):
``/classify`` (text -> label probabilities), ``/classify_many`` (lines, CSV -> table, CSV file) and ``/explain``
(text -> word weights). The other events (Enter in the text box, the Explain tab's label, the model summary) are
private. The Batch tab writes its result CSV straight into the demo's Gradio cache, so there is one copy, and
``delete_cache`` removes it, and every upload, ``UI_FILES_TTL_S`` seconds later.
"""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import gradio as gr

from ...core.errors import InferenceFailed, QueueFull, RequestTooLarge, TextError
from ...core.texts import clean_text
from ..service import ClassifierService, texts_from_csv
from .errors import printable
from .json_api import EXAMPLES
from .state import ServingState

BATCH_TAB_LIMIT = 2000  # texts per upload in the Batch tab
PRIVATE = {"api_visibility": "private"}  # an event the page uses that is no API endpoint


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
        threshold = f", labels given at probability >= {info['threshold']:g}" if info["threshold"] is not None else ""
        return (f"**Model:** `{info['model_id']}` · **revision** `{info['resolved_revision'][:12]}` · "
                f"**test accuracy** {accuracy_text} · **backend** {info['quantization']}\n\n"
                f"**Labels** ({info['problem_type'].replace('_', ' ')}{threshold}): {', '.join(info['labels'])}")

    async def classify(self, text: str) -> dict[str, float]:
        """The probability of every label for one text (a headline or a whole article)."""
        (prediction,) = await self._call(lambda service: service.predict([typed_text(text)]))
        return prediction.probabilities

    def given_labels(self, scores: dict | None) -> str:
        """The labels the model gives for the scores shown: the most likely, or every one at or above the
        threshold (multi-label)."""
        if self.state.service is None or not scores:
            return ""
        task = self.state.service.task
        confidence = {c["label"]: c["confidence"] for c in scores.get("confidences") or []}
        given = [task.labels[i] for i in task.chosen([confidence.get(name, 0.0) for name in task.labels])]
        return f"**Given:** {', '.join(given) or 'no label (none reaches the threshold)'}"

    async def explain(self, text: str) -> list[tuple[str, float | None]]:
        """Each word of the text with how much it pushed the prediction (leave-one-word-out), scaled to [-1, 1]."""
        explanation = await self._call(lambda service: service.explain(typed_text(text)))
        return explanation.highlighted()

    async def classify_many(self, lines: str, upload: str | None):
        """One text per line, or a CSV upload: a table of predictions and the same as a CSV file."""
        texts = self._batch_texts(lines, upload)

        async def predict_in_pieces(service: ClassifierService):
            # Request-sized pieces, one after another, so a big upload shares the queue with API callers.
            step = service.config.max_texts_per_request
            return [p for start in range(0, len(texts), step) for p in await service.predict(texts[start:start + step])]

        predictions = await self._call(predict_in_pieces)
        labels = self.state.service.labels
        header = ["text", "label", "score", "labels", *labels, "truncated"]
        rows = [[text, p.label, round(p.score, 4), "; ".join(p.labels),
                 *(round(p.probabilities[name], 4) for name in labels), p.truncated]
                for text, p in zip(texts, predictions)]
        return gr.update(value=rows, headers=header), self._write_result_csv([header, *rows])

    def _batch_texts(self, lines: str, upload: str | None) -> list[str]:
        try:
            texts = texts_from_csv(upload, BATCH_TAB_LIMIT) if upload else [
                t for t in (lines or "").splitlines() if clean_text(t)]
        except (ValueError, OSError) as err:
            raise gr.Error(f"Cannot read the file: {printable(str(err))}") from None
        if not texts:
            raise gr.Error("Paste one text per line, or upload a CSV.")
        if len(texts) > BATCH_TAB_LIMIT:
            raise gr.Error(f"{len(texts)} texts; at most {BATCH_TAB_LIMIT} at once.")
        return [clean_text(text) for text in texts]  # what the model reads, and safe to show and to save as UTF-8

    def _write_result_csv(self, rows: list[list]) -> str:
        # Inside the Blocks' own cache, Gradio serves the file as it is instead of copying it, and its
        # delete_cache schedule removes it; a file in the temp folder was copied and never removed.
        folder = self.cache_dir / f"distrinews-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        path = folder / "predictions.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        return str(path)

    async def _call(self, call):
        """``await call(service)``, with every way it can fail shown to the visitor as a message, not a crash."""
        try:
            return await call(self.service())
        except (QueueFull, TextError, InferenceFailed, RequestTooLarge) as err:
            raise gr.Error(printable(str(err))) from None


def typed_text(text: str | None) -> str:
    if not text or not clean_text(text):
        raise gr.Error("Type a headline first.")
    return text


def build_demo(state: ServingState, files_ttl_s: int) -> gr.Blocks:
    """The demo's page; files it writes or receives are deleted ``files_ttl_s`` seconds later."""
    demo = Demo(state)
    with gr.Blocks(title="DistriNews: news topic classifier", analytics_enabled=False,
                   delete_cache=(max(1, files_ttl_s // 2), files_ttl_s)) as blocks:
        gr.Markdown("# DistriNews\nClassify a headline or a whole article with the model below: the labels it "
                    "gives and every label's probability.")
        summary = gr.Markdown("**Model:** loading…")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    headline = gr.Textbox(label="Headline or article", lines=3, elem_id="headline",
                                          placeholder="Paste a news headline, or a whole article…")
                    run = gr.Button("Classify", variant="primary", elem_id="classify")
                    gr.Examples(EXAMPLES, inputs=headline)
                with gr.Column():
                    label = gr.Label(label="Scores", elem_id="topic")  # every label: a multi-label model gives any
                    given = gr.Markdown(elem_id="given")
            run.click(demo.classify, headline, label, api_name="classify").then(demo.given_labels, label, given,
                                                                                **PRIVATE)
            headline.submit(demo.classify, headline, label, **PRIVATE).then(demo.given_labels, label, given,
                                                                             **PRIVATE)
        with gr.Tab("Batch"):
            lines = gr.Textbox(label="One text per line", lines=8)
            upload = gr.File(label="…or a CSV (a 'text' column, or AG News class,title,description rows)",
                             file_types=[".csv"], type="filepath")
            run_many = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(label="Predictions", interactive=False, wrap=True)
            download = gr.File(label="Download as CSV")
            run_many.click(demo.classify_many, [lines, upload], [table, download], api_name="classify_many")
        with gr.Tab("Explain"):
            gr.Markdown("Which words pushed the prediction? Each word is left out in turn (one batch of "
                        "variants); red words pushed towards the predicted topic, purple ones away from it.")
            explain_text = gr.Textbox(label="Headline", lines=3, value=EXAMPLES[3])
            run_explain = gr.Button("Explain", variant="primary")
            explain_label = gr.Label(num_top_classes=4, label="Topic")
            highlighted = gr.HighlightedText(label="Word influence", combine_adjacent=False, show_legend=True)
            run_explain.click(demo.explain, explain_text, highlighted, api_name="explain")
            run_explain.click(demo.classify, explain_text, explain_label, **PRIVATE)
        blocks.load(demo.model_summary, None, summary, **PRIVATE)
    demo.cache_dir = Path(blocks.GRADIO_CACHE)
    return blocks
