"""The document store's SQLite schema, and the migration of a store made before collections and metadata (its
documents go to the default collection; passage ids, and so the saved vector index, are kept)."""
import sqlite3

from .collection import DEFAULT_COLLECTION

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL, source TEXT, content_hash TEXT NOT NULL,
    n_passages INTEGER NOT NULL, n_tokens INTEGER NOT NULL, PRIMARY KEY (collection, id)
);
CREATE TABLE IF NOT EXISTS passages (
    pid INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, doc_id TEXT NOT NULL, seq INTEGER NOT NULL,
    text TEXT NOT NULL, token_ids TEXT NOT NULL, chunk_key TEXT NOT NULL, vector BLOB NOT NULL,
    FOREIGN KEY (collection, doc_id) REFERENCES documents(collection, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(collection, doc_id);
CREATE TABLE IF NOT EXISTS metadata (
    collection TEXT NOT NULL, doc_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (collection, doc_id, key),
    FOREIGN KEY (collection, doc_id) REFERENCES documents(collection, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS metadata_match ON metadata(collection, key, value);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def is_current(db: sqlite3.Connection) -> bool:
    """Whether the store is empty or of this schema (a store made before collections is not)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(documents)")}
    return not columns or "collection" in columns


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Creates the tables, or brings a store without collections to this schema in one transaction."""
    if is_current(db):
        db.executescript(SCHEMA)
        return
    db.execute("PRAGMA foreign_keys=OFF")  # outside the transaction: the old tables are renamed, then dropped
    try:
        with db:
            db.execute("BEGIN IMMEDIATE")
            if "collection" in {r[1] for r in db.execute("PRAGMA table_info(documents)")}:
                return  # another process migrated it meanwhile
            db.execute("ALTER TABLE documents RENAME TO documents_v1")
            db.execute("ALTER TABLE passages RENAME TO passages_v1")
            db.execute("DROP INDEX IF EXISTS passages_doc")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO documents SELECT ?, id, title, source, content_hash, n_passages, n_tokens "
                       "FROM documents_v1", (DEFAULT_COLLECTION,))
            db.execute("INSERT INTO passages (pid, collection, doc_id, seq, text, token_ids, chunk_key, vector) "
                       "SELECT pid, ?, doc_id, seq, text, token_ids, chunk_key, vector FROM passages_v1",
                       (DEFAULT_COLLECTION,))
            old = db.execute("SELECT seq FROM sqlite_sequence WHERE name='passages_v1'").fetchone()
            db.execute("DROP TABLE passages_v1")
            db.execute("DROP TABLE documents_v1")
            if old:  # passage ids are never reused: the vector index is keyed by them
                db.execute("UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name='passages'", (old[0],))
    finally:
        db.execute("PRAGMA foreign_keys=ON")
