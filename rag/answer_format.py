"""How an answer's sources are printed, by the CLI over a local data directory and over gRPC alike."""

SOURCES_HEADER = ("Sources (in retrieval order: vector search and BM25 ranks fused; "
                  "cosine: the passage's similarity to the question):")


def format_sources(sources: list[tuple[str, str, float]]) -> str:
    """(document id, title, cosine similarity) in retrieval order -> the lines under the header."""
    lines = [SOURCES_HEADER]
    lines += [f"  {rank}. {doc_id}  [{title}]  cosine {score:.3f}" for rank, (doc_id, title, score) in
              enumerate(sources, 1)]
    return "\n".join(lines) + "\n"
