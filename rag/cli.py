"""The ``rag`` command: a thin layer over the Python API (``rag.ingest``, ``rag.query``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

import rag
from rag.errors import RagError

app = typer.Typer(
    help="Cited answers over your news articles, offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def main(
    corpus_dir: Annotated[Path | None, typer.Option(help="Folder of articles [env: RAG_CORPUS_DIR]")] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Index folder [env: RAG_INDEX_DIR]")] = None,
    embedding_model: Annotated[
        str | None, typer.Option(help="Model folder or package [env: RAG_EMBEDDING_MODEL]")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Passages per answer [env: RAG_TOP_K]")] = None,
    generator: Annotated[
        str | None, typer.Option(help="extractive, openai or ollama [env: RAG_GENERATOR]")
    ] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="LLM server [env: RAG_LLM_BASE_URL]")] = None,
    llm_model: Annotated[str | None, typer.Option(help="LLM model name [env: RAG_LLM_MODEL]")] = None,
) -> None:
    """Flags override RAG_* environment variables, which override the defaults."""
    overrides: dict[str, Any] = {
        "corpus_dir": corpus_dir,
        "index_dir": index_dir,
        "embedding_model": embedding_model,
        "top_k": top_k,
        "generator": generator,
        "llm_base_url": llm_base_url,
        "llm_model": llm_model,
    }
    try:
        rag.configure(**{k: v for k, v in overrides.items() if v is not None})
    except RagError as exc:  # a bad setting or generator: caught here, at the command's edge
        raise _fail(str(exc)) from None


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=1)


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders (default: the corpus folder)")
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Delete the index and build it again")] = False,
) -> None:
    """Index new and changed articles and drop deleted ones (running it twice changes nothing)."""
    try:
        report = rag.ingest(paths or None, rebuild=rebuild)
    except RagError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"added {len(report.added)}, updated {len(report.updated)}, removed {len(report.removed)}, "
        f"unchanged {len(report.unchanged)}, skipped {len(report.skipped)}; "
        f"{report.chunks_embedded} chunks embedded in {report.seconds:.1f} s"
    )
    for skipped in report.skipped:
        console.print(f"  [yellow]skipped[/] {escape(skipped.path)}: {escape(skipped.reason)}")


@app.command()
def check(
    repair: Annotated[bool, typer.Option(help="Compare every store with the articles and fix them")] = False,
) -> None:
    """Check that Chroma, the vector files and BM25 hold exactly the indexed articles (exit 1 if not)."""
    from rag.errors import ModelNotFoundError, RagIndexError

    try:
        pipeline = rag.get_pipeline()
        if repair:
            pipeline.ingest(full=True)
        problems = pipeline.index.check()
        articles = len(pipeline.index.store.catalog())
    except (RagIndexError, ModelNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if problems:
        for problem in problems:
            console.print(f"[red]inconsistent:[/] {escape(problem)}")
        console.print("Run `rag check --repair` to fix it.")
        raise typer.Exit(code=1)
    console.print(f"consistent: {articles} articles, generation {pipeline.index.generation}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="Your question")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the Answer as JSON")] = False,
) -> None:
    """Answer a question from the articles, with numbered citations."""
    try:
        answer = rag.query(question)
    except RagError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(answer.model_dump(), ensure_ascii=False, indent=2))
        return
    if answer.notice:
        console.print(f"[yellow]Note:[/] {escape(answer.notice)}\n")
    console.print(escape(answer.text), style=None if answer.found else "italic")
    for sentence in answer.uncited:
        console.print(f"[yellow]uncited:[/] {escape(sentence)}")
    for c in answer.citations:
        console.print(
            f"\n[bold][{c.n}][/] {escape(c.title)} [dim]({escape(c.article_id)}, "
            f"chars {c.start}-{c.end})[/]\n    “{escape(c.quote)}”"
        )
    if not answer.found and answer.passages:
        titles = list(dict.fromkeys(p.title for p in answer.passages))
        console.print(f"\n[dim]Searched the closest passages in: {escape('; '.join(titles))}[/]")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env: GRADIO_SERVER_NAME]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env: GRADIO_SERVER_PORT]")] = None,
) -> None:
    """Start the web chat (builds the index first if there is none)."""
    import app as web

    try:
        web.launch(host=host, port=port)
    except RagError as exc:
        raise _fail(str(exc)) from None


if __name__ == "__main__":
    app()
