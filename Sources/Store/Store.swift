package import Kinds

/// What the pipeline asks of a store: the ledger by file id and by bytes, a batch's commit, a large file's
/// chunks, and housekeeping. Two implementations: `AppDatabase` (SQLite, one host) and the PostgreSQL
/// store several hosts share (`SiteStore`, target PostgresStore). Called on the pipeline's own queue
/// (never on Swift's cooperative pool): an implementation may block.
package protocol PipelineStore: Sendable {
    /// Commits a batch of files in one transaction (``AppDatabase/commit(_:finishedAt:)``).
    func commit(_ files: [PreparedFile], finishedAt: String) throws(StoreError) -> [CommittedFile]
    /// Whether the ledger has a row of `id`.
    func hasLedgerRow(id: String) throws(StoreError) -> Bool
    /// The ledger row of `id`, if the file has one.
    func ledgerReport(id: String) throws(StoreError) -> CommittedFile?
    /// An earlier file of `kind` with these bytes whose records were stored, other than `id`.
    func earlierFile(kind: Kind, sha256: String, excluding id: String) throws(StoreError) -> String?
    /// Records of one chunk of a large file, in a transaction shared with its next chunks.
    func writeChunk(_ chunk: AppDatabase.Chunk, fileID: String) throws(StoreError) -> FileReport
    /// Commits the open chunk transaction, if any.
    func commitChunks() throws(StoreError)
    /// Rolls the open chunk transaction back, if any.
    func rollbackChunks()
    /// Copies committed log pages into the database (SQLite's WAL); nothing where the server does it.
    func checkpoint() throws(StoreError)
}

extension AppDatabase: PipelineStore {}
