// Pipeline: the processor service (Postfix's qmgr): recover, discover, claim, process, finish.
//
// Ties the stages together and owns the order of steps that makes a file's life crash-safe:
//   claim (rename into processing/) → read, digest, parse, validate → ONE transaction with the records
//   and the ledger rows of a batch (group commit) → sidecars (tmp + rename) → rename into done/ or
//   failed/ → fsync the folders. A crash anywhere leaves the file in processing/, and recovery finishes it
//   from its ledger row or processes it again; record writes are idempotent on natural keys.
// Trusts nothing in the files. Logs ids, kinds, outcomes, counts and timings only: never a name or value.

import CMemory
import Crypto
import Dispatch
import JSONSchema
package import Kinds
package import Logging
import Metrics
import ServiceLifecycle
package import Spool
package import Store
import Synchronization
import Watcher

#if canImport(Glibc)
    import Glibc
#endif

/// How the processor discovers and batches files. Every key has a default.
package struct PipelineConfiguration: Sendable {
    /// A file found by a rescan (no close/rename event) is claimed once its size and mtime have held
    /// still this long. Default 2 s.
    package var settle: Duration
    /// A file that a writer still holds open (inotify saw it opened and not yet closed) is not claimed —
    /// an SFTP upload that stalls longer than `settle` must not be taken half-written — until it has been
    /// unchanged this long (or `settle`, if longer): a writer that never closes cannot hold it for ever.
    /// Default 10 min.
    package var openHold: Duration
    /// A file written in place under its name (inotify saw it closed after writing, not renamed in) is
    /// claimed once it has stayed unchanged (size, mtime, ctime, inode) and closed this long: its writer
    /// may still set its times and mode by name (`rsync --inplace`), or open it again. Default 1 s.
    package var closeGrace: Duration
    /// Full rescan of every inbox, the safety net under inotify. Default 5 s.
    package var rescanInterval: Duration
    /// Most files claimed and committed in one transaction. Default 512.
    package var batchSize: Int
    /// First and longest wait before retrying a file after transient trouble. Defaults 1 s and 60 s.
    package var retryInitial: Duration
    package var retryMax: Duration
    /// How often the watcher wakes the processor without events. Default 200 ms.
    package var tick: Duration
    /// An NDJSON file larger than this is streamed: read in bounded chunks and committed in bounded
    /// batches, so memory does not grow with the file. Default 8 MiB.
    package var streamThreshold: Int
    /// Days finished files stay in done/ before the daemon removes them (checked hourly; the ledger
    /// keeps their rows). nil keeps them for ever. Default 30.
    package var retentionDays: Int?
    /// The memory the pipeline plans its work for, in bytes (`memory_budget`, in MiB, in the config):
    /// every whole-file batch, streamed chunk and record is sized from it, so that the daemon's peak RSS
    /// stays under it whatever is dropped. Default 256 MiB. ARCHITECTURE.md ("Memory") has the sums.
    package var memoryBudget: Int

    /// The largest record (an NDJSON line, an array element, a CSV row) or JSON document parsed into
    /// values; a larger one is rejected with its size. Parsed, a document takes up to ~32 times its bytes
    /// (an array of `1,`: a value of 64 bytes every 2 bytes), and two chunks may be in hand at once (one
    /// committing, one parsing): 1/256 of the budget, 1 MiB at 256 MiB.
    package var recordLimit: Int { max(64 << 10, memoryBudget / 256) }
    /// The bytes of whole files parsed together in one group commit (a single file that is larger is
    /// streamed) and of the records of one streamed chunk: 1/256 of the budget.
    package var batchBytes: Int { max(64 << 10, memoryBudget / 256) }
    /// The records parsed together, whole files or a streamed chunk: each costs up to ~3 KiB parsed and
    /// rejected with its problems, so 1/16,384 of the budget (16,384 at 256 MiB). A file that alone has
    /// more records than ``Engine/chunkRecords`` is streamed.
    package var batchRecords: Int { max(1_000, memoryBudget / (16 << 10)) }
    /// The largest file read whole: the configured stream threshold, capped by ``batchBytes``.
    package var wholeLimit: Int { min(streamThreshold, batchBytes) }
    /// Test only: a file whose name contains this crashes the daemon (the crash guard's tests). nil.
    package var testCrashOn: String?

    package init(
        settle: Duration = .seconds(2),
        openHold: Duration = .seconds(600),
        closeGrace: Duration = .seconds(1),
        rescanInterval: Duration = .seconds(5),
        batchSize: Int = 512,
        retryInitial: Duration = .seconds(1),
        retryMax: Duration = .seconds(60),
        tick: Duration = .milliseconds(200),
        streamThreshold: Int = 8 << 20,
        retentionDays: Int? = 30,
        memoryBudget: Int = 256 << 20,
        testCrashOn: String? = nil
    ) {
        self.settle = settle
        self.openHold = openHold
        self.closeGrace = closeGrace
        self.rescanInterval = rescanInterval
        self.batchSize = batchSize
        self.retryInitial = retryInitial
        self.retryMax = retryMax
        self.tick = tick
        self.streamThreshold = streamThreshold
        self.retentionDays = retentionDays
        self.memoryBudget = memoryBudget
        self.testCrashOn = testCrashOn
    }
}

/// The processor service: runs until graceful shutdown, then finishes the batch in hand and returns.
package final class Processor: Service {
    private let engine: Engine
    private let spool: Spool
    private let configuration: PipelineConfiguration
    private let queue = DispatchQueue(label: "carespool.pipeline")
    private let heartbeat: @Sendable (_ first: Bool) -> Void

    /// `heartbeat` is called after every step of the processing loop (at least every `tick`) and as a
    /// large file makes progress, with `first` true once recovery and the first full rescan are done:
    /// readiness, and the watchdog's proof that the pipeline is not hung. A large file resumed after a
    /// restart is progress after that rescan: readiness does not wait for its end (a 10M-row file took
    /// five minutes, past systemd's start timeout).
    package init(
        spool: Spool,
        database: any PipelineStore,
        catalog: Catalog,
        configuration: PipelineConfiguration = .init(),
        logger: Logger,
        heartbeat: @escaping @Sendable (_ first: Bool) -> Void = { _ in }
    ) {
        self.spool = spool
        self.configuration = configuration
        self.heartbeat = heartbeat
        self.engine = Engine(
            spool: spool,
            database: database,
            catalog: catalog,
            configuration: configuration,
            logger: logger,
            progress: { heartbeat(true) }
        )
    }

    package func run() async throws {
        try spool.prepare()
        try CrashGuard.install(spool: spool)
        let watcher = try Watcher(folders: spool.inboxes.map(\.path), tick: configuration.tick)
        engine.drainHints = { watcher.drain() }
        do {
            try await onQueue { try self.engine.recover() }
        } catch {
            watcher.stop()
            throw error
        }
        let engine = self.engine
        let purging = configuration.retentionDays.map { days in
            Task.detached(priority: .background) {
                // Hourly, off the processing queue: removing a day of files takes a while.
                while !Task.isCancelled {
                    Self.purge(spool: engine.spool, days: days, logger: engine.logger)
                    try? await Task.sleep(for: .seconds(3_600))
                }
            }
        }
        defer { purging?.cancel() }
        await withGracefulShutdownHandler {
            var first = true
            for await _ in watcher.wakeups {
                // A step that leaves claimed files queued (large files go one a step, the inboxes looked at
                // between them) is followed by the next at once, not at the next tick: 512 intake files in
                // the inbox at start took a tick (200 ms) each (hostile review).
                var more = true
                while more {
                    let hints = watcher.drain()
                    do {
                        more = try await onQueue { try engine.step(hints) }
                    } catch {
                        more = false
                        engine.logger.error("processing step failed", metadata: ["error": "\(error)"])
                    }
                    heartbeat(first)
                    first = false
                    if engine.stopping.load(ordering: .relaxed) { break }
                }
                if engine.stopping.load(ordering: .relaxed) { break }
            }
        } onGracefulShutdown: {
            engine.stopping.store(true, ordering: .relaxed)
            watcher.stop()
        }
        watcher.stop()
        engine.directorySync.flush()
    }

    /// Removes done/ folders of days older than the retention; logs what it removed.
    static func purge(spool: Spool, days: Int, logger: Logger) {
        do {
            let removed = try spool.purgeDone(before: Spool.cutoffDay(daysAgo: days))
            if !removed.folders.isEmpty {
                logger.notice(
                    "purged finished files past retention",
                    metadata: [
                        "purge.days": "\(removed.folders.count)", "purge.files": "\(removed.files)",
                        "retention.days": "\(days)",
                    ]
                )
            }
        } catch {
            logger.warning(
                "purge failed; tried again in an hour",
                metadata: ["error": "\(error.operation): \(error.reason)"]
            )
        }
    }

    private func onQueue<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }
}

extension Processor {
    /// Caps malloc's arenas at two: left to itself, glibc gives each allocating thread (event loops, the
    /// engine, the chunk committer, the parse workers) an arena of its own, and memory freed in one is not
    /// reused by another — the daemon resided 150–320 MiB under the `cost` campaign for sums of about
    /// 100, 143 MiB steadily with two arenas. Called first thing by `serve`.
    package static func tuneMemory() { _ = carespool_malloc_arenas(2) }
}

/// The processor's state; used only on the processor's serial queue.
final class Engine: @unchecked Sendable {
    let spool: Spool
    let database: any PipelineStore
    let catalog: Catalog
    var configuration: PipelineConfiguration
    let logger: Logger
    let ids = IDGenerator()
    let stopping = Atomic<Bool>(false)
    let directorySync: DirectorySync
    let checkpointQueue = DispatchQueue(label: "carespool.checkpoint")
    private let checkpointRunning = Atomic<Bool>(false)
    private var lastCheckpoint: Int64 = 0

    /// Which inbox entries are ready: the settle and open-hold rules, keyed by names' exact bytes.
    private var settle: SettleTracker
    private var nextRescan: Int64 = 0
    /// Claimed files waiting to be processed (recovered, or due for a retry).
    private var queued: [Spool.Claimed] = []
    /// Set when a batch left large files for later: one large file a step, so that the small files that
    /// arrive meanwhile are claimed between two large ones instead of waiting for all of them.
    private var largeDeferred = false
    /// Set while small files are committed between two chunks of a large one (``interleave()``).
    private var interleaving = false
    private var lastInterleave: Int64 = 0
    /// How many times small files were taken between chunks: a step's list of ready entries is stale
    /// after that (names freed and maybe reused), so the step ends and the next one scans anew.
    private var interleaves = 0
    /// Set there too: a file that turns out large is queued, not streamed from inside another's stream.
    private var noStreaming = false
    /// Set while ``processWhole(_:claimedAt:)`` reads a large file's one document whole: never streamed.
    private var wholeOnly = false
    /// Set while the batch in hand is a crash suspect processed alone: nothing is interleaved beside it
    /// (a file that crashed beside it would count as its second crash).
    private var isolatedInHand = false
    /// Folders the watcher named while ``interleave()`` took its hints: scanned at the next step.
    private var hintedFolders: Set<String> = []
    /// The watcher's hints so far (set by the processor once its watcher runs): ``interleave()`` takes them
    /// in, so that it knows which files were completed (closed, renamed in) and which are still open.
    var drainHints: @Sendable () -> WatchHints = { WatchHints() }
    private var retries: [String: Retry] = [:]
    /// Transient failures so far of each file still in processing/: kept while a retry is queued, so that
    /// the backoff grows; forgotten when the file is finished.
    private var attempts: [String: Int] = [:]
    /// Inboxes found replaced (said once; no longer used).
    private var replacedInboxes: Set<String> = []
    /// Files to commit as rejected unread, with their one problem (sparse, or a permanent read error).
    private var unreadVerdicts: [String: String] = [:]
    /// A gzip file that is one JSON document, decompressed and hashed by processLarge for processWhole:
    /// never read again (its compressed size may be anything; its document is at most the record limit).
    var gzipWhole: [String: (bytes: [UInt8], sha256: String, size: Int)] = [:]
    private let unclaimableGauge = Gauge(label: "carespool_unclaimable_entries")
    /// Ids claimed by this run and not yet finished: they cannot have a ledger row.
    private var claimedFresh: Set<String> = []
    /// Recovered files that were in a batch when the daemon crashed: each is processed on its own.
    private var isolated: Set<String> = []
    /// Recovered files that crashed the daemon again on their own: set aside in failed/ unread.
    private var quarantined: Set<String> = []

    struct Retry {
        var file: Spool.Claimed
        var attempts: Int
        var due: Int64
        var lastError: String
    }

    /// Proof of progress for the watchdog, called as work advances within a step (each chunk of a large
    /// file, each batch), at most every 500 ms: a stall, not a long file, is what starves the watchdog.
    private let progressPing: @Sendable () -> Void
    private var lastProgress: Int64 = 0

    init(
        spool: Spool,
        database: any PipelineStore,
        catalog: Catalog,
        configuration: PipelineConfiguration,
        logger: Logger,
        progress: @escaping @Sendable () -> Void = {}
    ) {
        self.progressPing = progress
        self.spool = spool
        self.database = database
        self.catalog = catalog
        self.configuration = configuration
        self.logger = logger
        self.directorySync = DirectorySync(logger: logger)
        self.settle = SettleTracker(
            settle: configuration.settle.nanoseconds,
            openHold: configuration.openHold.nanoseconds,
            closeGrace: configuration.closeGrace.nanoseconds
        )
    }

    /// Queues every file left in processing/ by an earlier run: each is finished from its ledger row if it
    /// has one, and processed again otherwise.
    func recover() throws {
        // Temporary files an earlier run left half-written (a kill mid-write): never renamed, never needed.
        spool.removeStaleTemporaries(olderThan: 3_600)
        restoreInPlaceState()
        for kind in spool.kinds {
            queued += try spool.claimedFiles(kind: kind)
        }
        if !queued.isEmpty {
            logger.notice("recovering files left in processing", metadata: ["files.count": "\(queued.count)"])
        }
        let named = CrashGuard.suspects(spool: spool, present: Set(queued.map(\.id)))
        for (id, crashes) in named {
            if crashes >= 2 {
                quarantined.insert(id)
                logger.error("file crashed the daemon twice: set aside in failed/", metadata: ["file.id": "\(id)"])
            } else {
                isolated.insert(id)
                logger.warning(
                    "file was in a batch when the daemon crashed: processed alone",
                    metadata: ["file.id": "\(id)"]
                )
            }
        }
        // Suspects first, one by one, so that the files behind them are not held up for long.
        let suspects = isolated.union(quarantined)
        queued = queued.filter { suspects.contains($0.id) } + queued.filter { !suspects.contains($0.id) }
        writeRetryState()
    }

    /// One wake-up: look at the inboxes the hints name (all of them when a rescan is due), claim what is
    /// ready, and process it in batches until nothing is ready or shutdown was requested. True when it
    /// left claimed files queued for the next step (large files, one a step): that step is due at once.
    @discardableResult
    func step(_ hints: WatchHints) throws -> Bool {
        // Intervals by the monotonic clock (a wall-clock step must not stop rescans and retries or claim
        // early); the wall clock only to compare with file mtimes.
        let now = Clock.monotonicNanos()
        let wallNow = Clock.nowNanos()
        settle.absorb(hints)
        var folders = hints.folders.union(hintedFolders)
        hintedFolders = []
        if hints.overflow || now >= nextRescan {
            folders = Set(spool.inboxes.map(\.path))
            nextRescan = now + configuration.rescanInterval.nanoseconds
        }
        // Unsettled files are looked at again every wake-up (a file held open is among them: it is observed
        // from its first scan on, and its open and close events name its folder).
        for folder in settle.foldersToRevisit(now: now) { folders.insert(String(decoding: folder, as: UTF8.self)) }
        var ready: [(Spool.Inbox, Spool.Entry)] = []
        for inbox in spool.inboxes where folders.contains(inbox.path) && !replacedInboxes.contains(inbox.path) {
            var entries: [Spool.Entry]
            do {
                entries = try spool.scan(inbox.path, withStat: false)
            } catch {
                if error.isInboxReplaced {
                    replacedInboxes.insert(inbox.path)
                    logger.critical(
                        "inbox folder was replaced after start (a symlink or another folder): no longer used",
                        metadata: [
                            "inbox.kind": "\(inbox.kind)",
                            "inbox.index": "\(spool.inboxes.firstIndex(of: inbox) ?? -1)",
                        ]
                    )
                } else {
                    logger.error(
                        "cannot scan inbox",
                        metadata: ["inbox.kind": "\(inbox.kind)", "error": "\(error.summary)"]
                    )
                }
                continue
            }
            // Entries found unclaimable stay out until they change (another inode under the name).
            spool.pruneUnclaimable(in: inbox, present: entries)
            entries.removeAll { spool.isUnclaimable($0, in: inbox) }
            let (found, events) = settle.scan(
                folder: inbox.path,
                arrival: inbox.arrival,
                entries: entries,
                now: now,
                wallNow: wallNow,
                fullEntry: { spool.entry(inbox.path, $0.bytes) }
            )
            // Files left for their writers are said as one count a scan (a restart finds them all again).
            let leftInPlace = events.filter { if case .writtenInPlace = $0 { true } else { false } }.count
            if leftInPlace > 0 {
                logger.notice(
                    "files written in place in an inbox that takes renamed files only: left for their writers",
                    metadata: [
                        "inbox.kind": "\(inbox.kind)", "inbox.arrival": "rename", "files.count": "\(leftInPlace)",
                    ]
                )
            }
            for event in events {
                switch event {
                case .writtenInPlace: break
                case .heldOpen:
                    logger.info(
                        "file settled but still open by its writer: waiting for the close",
                        metadata: [
                            "inbox.kind": "\(inbox.kind)",
                            "open_hold.ms": "\(configuration.openHold.nanoseconds / 1_000_000)",
                        ]
                    )
                case .claimedWhileOpen(_, let held):
                    logger.warning(
                        "file still open by its writer claimed after holding still",
                        metadata: ["inbox.kind": "\(inbox.kind)", "held.ms": "\(held / 1_000_000)"]
                    )
                }
            }
            ready += found.map { (inbox, $0) }
        }
        // Retries that are due.
        for (id, retry) in retries where retry.due <= now {
            queued.append(retry.file)
            retries[id] = nil
        }
        unclaimableGauge.record(spool.unclaimableCount)
        if !ready.isEmpty {
            logger.debug(
                "inboxes scanned",
                metadata: [
                    "scan.folders": "\(folders.count)", "scan.ready": "\(ready.count)",
                    "scan.ms": "\(Double(Clock.monotonicNanos() - now) / 1e6)",
                ]
            )
        }
        var start = 0
        var more = false
        while start < ready.count || !queued.isEmpty {
            if stopping.load(ordering: .relaxed) { break }
            var batch: [Spool.Claimed] = []
            var claimedAt: [String: Int64] = [:]
            var room = configuration.batchSize
            while !queued.isEmpty && batch.count < room {
                if isolated.contains(queued[0].id) {
                    // A crash suspect goes alone: if it crashes the daemon again, it alone is named.
                    guard batch.isEmpty else { break }
                    room = 1
                }
                let file = queued.removeFirst()
                batch.append(file)
                claimedAt[file.id] = Clock.monotonicNanos()
            }
            while start < ready.count && batch.count < room {
                let (inbox, entry) = ready[start]
                start += 1
                if let claimed = claim(entry, from: inbox) {
                    batch.append(claimed)
                    claimedAt[claimed.id] = Clock.monotonicNanos()
                }
            }
            if batch.isEmpty { break }
            isolatedInHand = room == 1
            let interleavedBefore = interleaves
            CrashGuard.during(batch.map(\.id)) { process(batch, claimedAt: claimedAt) }
            isolatedInHand = false
            progressed()
            forgetFinished(batch)
            if interleaves != interleavedBefore {
                for (inbox, _) in ready[start...] { hintedFolders.insert(inbox.path) }
                break
            }
            // Large files left for later: end the step once every ready file is claimed, so that the next
            // one (at the next wake-up) looks at the inboxes again before the next large file.
            if largeDeferred && start >= ready.count {
                largeDeferred = false
                more = !queued.isEmpty
                break
            }
        }
        writeRetryState()
        writeUnclaimableState()
        writeInPlaceState()
        checkpointIfDue()
        return more
    }

    /// Claims one ready inbox entry under a fresh id; nil when it is gone, or cannot be claimed (said).
    private func claim(_ entry: Spool.Entry, from inbox: Spool.Inbox) -> Spool.Claimed? {
        do {
            // Gone, or another file under that name now (claimed by its inode): its state stays tracked.
            // A request's or a drop's own id, when it is free: not in hand, not waiting for a retry, not in
            // the ledger (a retried request comes back under its old id, which is taken).
            let reuse = { (candidate: String) -> Bool in
                guard !self.claimedFresh.contains(candidate), self.attempts[candidate] == nil,
                    self.retries[candidate] == nil
                else { return false }
                return (try? self.database.hasLedgerRow(id: candidate)) == false
            }
            guard let claimed = try spool.claim(entry, from: inbox, id: ids.next(), reuse: reuse) else { return nil }
            settle.forget(SettleTracker.key(folder: inbox.path, name: entry.bytes))
            claimedFresh.insert(claimed.id)
            return claimed
        } catch {
            if error.isInboxReplaced {
                return nil  // said at the next scan
            } else if error.isTransient {
                // Looked at again at the next rescan.
                logger.warning(
                    "cannot claim file yet",
                    metadata: ["inbox.kind": "\(inbox.kind)", "error": "\(error.summary)"]
                )
            } else if spool.markUnclaimable(entry, in: inbox, error: error.summary) {
                // A verdict on the entry: said once, not counted as pending, left until it changes.
                logger.error(
                    "inbox entry cannot be claimed: left in place, not tried again until it changes",
                    metadata: [
                        "inbox.kind": "\(inbox.kind)", "entry.type": "\(entry.type.rawValue)",
                        "entry.inode": "\(entry.inode)", "error": "\(error.summary)",
                    ]
                )
            }
            return nil
        }
    }

    /// Forgets the bookkeeping of a processed batch's files, except those left queued for later.
    private func forgetFinished(_ batch: [Spool.Claimed]) {
        let waiting = Set(queued.map(\.id))
        for file in batch where !waiting.contains(file.id) {
            claimedFresh.remove(file.id)
            isolated.remove(file.id)
            quarantined.remove(file.id)
            if retries[file.id] == nil { attempts[file.id] = nil }
            unreadVerdicts[file.id] = nil
        }
    }

    /// While a large file is streamed (called between its chunks, at most every second): the small files
    /// that became ready in any inbox meanwhile are claimed and committed now, so that one large file
    /// never holds up the others for its whole time. Files that turn out large are queued for later, never
    /// streamed from here; nothing here recurses.
    func interleave() {
        let now = Clock.monotonicNanos()
        guard !interleaving, !isolatedInHand, now - lastInterleave >= 1_000_000_000 else { return }
        interleaving = true
        defer {
            interleaving = false
            lastInterleave = Clock.monotonicNanos()
        }
        let small = Int64(configuration.wholeLimit)
        let streamIntake = configuration.streamThreshold != Int.max
        // What the watcher saw meanwhile: completed and still-open files (an SFTP upload that paused is
        // not taken half-written), as a step would. The folders it named are rescanned here.
        let hints = drainHints()
        settle.absorb(hints)
        // Every inbox is scanned here, but a file skipped here (large) is looked at by the next step too.
        hintedFolders.formUnion(hints.folders)
        if hints.overflow { hintedFolders.formUnion(spool.inboxes.map(\.path)) }
        var batch: [Spool.Claimed] = []
        var claimedAt: [String: Int64] = [:]
        for inbox in spool.inboxes where !replacedInboxes.contains(inbox.path) {
            guard var entries = try? spool.scan(inbox.path, withStat: false) else { continue }
            entries.removeAll { spool.isUnclaimable($0, in: inbox) }
            let (found, _) = settle.scan(
                folder: inbox.path,
                arrival: inbox.arrival,
                entries: entries,
                now: now,
                wallNow: Clock.nowNanos(),
                fullEntry: { spool.entry(inbox.path, $0.bytes) }
            )
            for entry in found where batch.count < configuration.batchSize {
                // Only what the whole-file path takes: a large file (or intake CSV, always streamed) waits.
                guard streamIntake ? inbox.kind != Kind.intake.rawValue : true,
                    let full = spool.entry(inbox.path, entry.bytes), full.type == .regular, full.size <= small,
                    let claimed = claim(entry, from: inbox)
                else { continue }
                batch.append(claimed)
                claimedAt[claimed.id] = Clock.monotonicNanos()
            }
        }
        // What its scans learnt of files left in place is saved now: the large file may take minutes.
        writeInPlaceState()
        guard !batch.isEmpty else { return }
        // The large file's open chunk transaction first: the small files commit in transactions of their own.
        do {
            try database.commitChunks()
        } catch {
            // Not now: the claimed small files wait for the next step (they are in processing/, queued).
            queued += batch
            return
        }
        interleaves += 1
        let streamingBefore = noStreaming
        noStreaming = true
        defer { noStreaming = streamingBefore }
        CrashGuard.during(batch.map(\.id)) { process(batch, claimedAt: claimedAt) }
        forgetFinished(batch)
    }

    /// Says that work advanced (the watchdog's proof), at most every 500 ms.
    func progressed() {
        let now = Clock.monotonicNanos()
        guard now - lastProgress >= 500_000_000 else { return }
        lastProgress = now
        progressPing()
    }

    /// Starts a WAL checkpoint on its own queue at most every 500 ms, never two at once.
    private func checkpointIfDue() {
        let now = Clock.monotonicNanos()
        guard now - lastCheckpoint >= 500_000_000 else { return }
        guard checkpointRunning.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else { return }
        lastCheckpoint = now
        checkpointQueue.async { [self] in
            do throws(StoreError) {
                try database.checkpoint()
            } catch {
                logger.warning("WAL checkpoint failed", metadata: ["error": "\(error.description)"])
            }
            checkpointRunning.store(false, ordering: .releasing)
        }
    }

    /// Reads, commits and finishes one batch of claimed files, within the memory budget: large files and
    /// files of many records are streamed one at a time, outside the group commit; the others are read
    /// in groups of at most ``PipelineConfiguration/batchBytes`` and parsed in parts of at most
    /// ``PipelineConfiguration/batchRecords`` records, each part committed before the next is parsed.
    private func process(_ all: [Spool.Claimed], claimedAt: [String: Int64]) {
        let threshold = Int64(configuration.wholeLimit)
        let streamIntake = configuration.streamThreshold != Int.max
        // Size before work: a sparse file (a hole reads as NULs, which no JSON or CSV holds) is rejected
        // unread, before a byte of it is read or hashed — a 20 GB file with nothing on disk is no work.
        var sizes: [String: Int64] = [:]
        var gzipped = Set<String>()
        for file in all where !quarantined.contains(file.id) && unreadVerdicts[file.id] == nil {
            guard let (size, sparse, links, compression) = spool.sizeBeforeReading(file) else { continue }
            sizes[file.id] = size
            if case .unsupported(let format) = compression {
                unreadVerdicts[file.id] = Compression.unsupportedMessage(format)
            } else if compression == .gzip {
                gzipped.insert(file.id)
            }
            if sparse {
                unreadVerdicts[file.id] =
                    "a sparse file (\(size) bytes long, with holes that read as NUL bytes): never read; "
                    + "send the file itself, not a file with holes"
            } else if links > 1 {
                // Its other name may be in its sender's folder: the bytes could change under the daemon.
                unreadVerdicts[file.id] =
                    "the file has \(links) hard links: never read, as its sender could change it through another "
                    + "name after the claim; send the file itself"
            }
        }
        var large = all.filter { file in
            guard !quarantined.contains(file.id), unreadVerdicts[file.id] == nil else { return false }
            guard let entry = spool.entry(spool.processingPath(file.kind), file.spoolName) else { return false }
            // Intake CSV is always streamed (processLarge reads a JSON array of intake records whole). So is
            // a gzip file: its size says nothing of its records' (processLarge sends one document back here).
            // Back from processLarge (one document), a file is read whole whatever its size on disk.
            return entry.type == .regular && !wholeOnly
                && (entry.size > threshold || (streamIntake && file.kind == Kind.intake.rawValue)
                    || gzipped.contains(file.id))
        }
        let largeIDs = Set(large.map(\.id))
        // Read whole only up to the threshold that sent them here: grown past it since, a file is not read.
        let whole = all.filter { !largeIDs.contains($0.id) }.map { file in
            var bounded = file
            // processLarge bounded it already (at most the record limit) when it sent it back here.
            bounded.readLimit = wholeOnly ? file.readLimit : min(file.readLimit ?? threshold, threshold)
            return bounded
        }
        defer {
            // One large file now; the others wait in the queue (still claimed, in processing/) for the
            // steps after this one, each of which first takes what arrived meanwhile. Between two chunks
            // of another large file, none now.
            if noStreaming {
                queued.append(contentsOf: large)
                largeDeferred = largeDeferred || !large.isEmpty
            } else if let first = large.first {
                if large.count > 1 {
                    queued.append(contentsOf: large.dropFirst())
                    largeDeferred = true
                }
                processLarge(first, claimedAt: claimedAt[first.id] ?? Clock.monotonicNanos())
            }
        }
        var group: [Spool.Claimed] = []
        var groupBytes: Int64 = 0
        // Between two chunks of a large file (two chunks in hand), half as much at a time.
        let groupBytesLimit = noStreaming ? configuration.batchBytes / 2 : configuration.batchBytes
        for file in whole {
            let size = sizes[file.id] ?? 0
            if !group.isEmpty && groupBytes + size > Int64(groupBytesLimit) {
                large += processGroup(group, claimedAt: claimedAt)
                group = []
                groupBytes = 0
            }
            group.append(file)
            groupBytes += size
        }
        if !group.isEmpty { large += processGroup(group, claimedAt: claimedAt) }
    }

    /// Reads a group of files (at most ``PipelineConfiguration/batchBytes`` together) and counts each
    /// one's records without parsing it; commits them in parts of at most
    /// ``PipelineConfiguration/batchRecords`` records. Returns the files of more records than a streamed
    /// chunk holds: they are streamed instead.
    private func processGroup(_ group: [Spool.Claimed], claimedAt: [String: Int64]) -> [Spool.Claimed] {
        var read: [(file: Spool.Claimed, content: Result<Spool.Content, SpoolError>?, records: Int)] = []
        var streamed: [Spool.Claimed] = []
        for file in group {
            guard !quarantined.contains(file.id), unreadVerdicts[file.id] == nil else {
                read.append((file, nil, 1))
                continue
            }
            if let crash = configuration.testCrashOn, file.originalName.contains(crash) {
                fatalError("test crash on \(file.id) (--test-crash-on)")
            }
            if let whole = gzipWhole.removeValue(forKey: file.id) {
                read.append((file, .success(.decompressed(whole.bytes, sha256: whole.sha256, size: whole.size)), 1))
                continue
            }
            do throws(SpoolError) {
                let content = try spool.read(file)
                var records = 1
                if case .regular(let bytes) = content {
                    records = JSONParser.topLevelCount(bytes) ?? (bytes.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) } + 1)
                    // Never back to streaming from processWhole (one document, already judged there).
                    if records > Self.chunkRecords && !wholeOnly {
                        streamed.append(file)
                        continue
                    }
                }
                read.append((file, .success(content), records))
            } catch {
                read.append((file, .failure(error), 1))
            }
        }
        var part: [(file: Spool.Claimed, content: Result<Spool.Content, SpoolError>?)] = []
        var partRecords = 0
        for entry in read {
            let recordsLimit = noStreaming ? configuration.batchRecords / 2 : configuration.batchRecords
            if !part.isEmpty && partRecords + entry.records > recordsLimit {
                commit(part, claimedAt: claimedAt)
                part = []
                partRecords = 0
            }
            part.append((entry.file, entry.content))
            partRecords += entry.records
        }
        if !part.isEmpty { commit(part, claimedAt: claimedAt) }
        return streamed
    }

    /// Parses, validates, commits in one transaction and finishes files already read (nil content: a
    /// file set aside or judged unread).
    private func commit(
        _ batch: [(file: Spool.Claimed, content: Result<Spool.Content, SpoolError>?)],
        claimedAt: [String: Int64]
    ) {
        let receivedAt = Clock.timestamp()
        let t0 = Clock.monotonicNanos()
        // Digest, parse and validate: CPU-bound and independent per file, so spread over the cores.
        let results = Mutex([Int: Result<Prepared, SpoolError>]())
        DispatchQueue.concurrentPerform(iterations: min(ProcessInfoCores.count, batch.count)) { worker in
            var mine: [Int: Result<Prepared, SpoolError>] = [:]
            var index = worker
            while index < batch.count {
                let (file, content) = batch[index]
                if let kind = Kind(rawValue: file.kind) {
                    if quarantined.contains(file.id) {
                        mine[index] = .success(setAside(file, kind: kind, receivedAt: receivedAt))
                    } else if let message = unreadVerdicts[file.id] {
                        mine[index] = .success(
                            unread(
                                file,
                                kind: kind,
                                receivedAt: receivedAt,
                                mayHaveLedgerRow: !claimedFresh.contains(file.id),
                                message
                            )
                        )
                    } else {
                        switch content {
                        case .success(let content):
                            mine[index] = .success(
                                prepare(
                                    file,
                                    kind: kind,
                                    content: content,
                                    receivedAt: receivedAt,
                                    fresh: claimedFresh.contains(file.id)
                                )
                            )
                        case .failure(let error): mine[index] = .failure(error)
                        case nil: break
                        }
                    }
                }
                index += ProcessInfoCores.count
            }
            results.withLock { $0.merge(mine) { a, _ in a } }
        }
        var prepared: [Prepared] = []
        let gathered = results.withLock { $0 }
        for index in batch.indices {
            let file = batch[index].file
            switch gathered[index] {
            case .success(let entry): prepared.append(entry)
            case .failure(let error):
                if error.code == ENOENT {
                    logger.warning("claimed file vanished", metadata: ["file.id": "\(file.id)"])
                } else if error.isTransient {
                    scheduleRetry(file, reason: error.summary)
                } else if let kind = Kind(rawValue: file.kind) {
                    // Permanent (EACCES, EPERM, ELOOP, …): a verdict on the file, which goes to failed/ with
                    // its reason, instead of a retry every second for ever.
                    prepared.append(
                        unread(
                            file,
                            kind: kind,
                            receivedAt: receivedAt,
                            mayHaveLedgerRow: !claimedFresh.contains(file.id),
                            "cannot read the file: \(error.summary)"
                        )
                    )
                }
            case nil: break
            }
        }
        guard !prepared.isEmpty else { return }
        let t1 = Clock.monotonicNanos()
        let committed: [CommittedFile]
        do {
            committed = try database.commit(prepared.map(\.prepared), finishedAt: Clock.timestamp())
        } catch {
            if error.isTransient || prepared.count == 1 {
                for entry in prepared { scheduleRetry(entry.file, reason: error.description) }
                return
            }
            // Not transient: commit one by one so that one file cannot hold back the others.
            for entry in prepared { process([entry.file], claimedAt: claimedAt) }
            return
        }
        let t2 = Clock.monotonicNanos()
        var touched = Set<String>()
        var finished: [(Spool.Claimed, CommittedFile)] = []
        for (entry, result) in zip(prepared, committed) {
            do {
                touched.formUnion(try finish(entry.file, entry.prepared, result))
                finished.append((entry.file, result))
            } catch {
                scheduleRetry(entry.file, reason: error.summary)
            }
        }
        directorySync.schedule(touched)
        let now = Clock.monotonicNanos()
        logger.debug(
            "batch finished",
            metadata: [
                "batch.files": "\(batch.count)",
                "batch.read_ms": "\(Double(t1 - t0) / 1e6)",
                "batch.commit_ms": "\(Double(t2 - t1) / 1e6)",
                "batch.finish_ms": "\(Double(now - t2) / 1e6)",
            ]
        )
        for (file, result) in finished {
            logFinished(file, result.report, claimedAt: claimedAt[file.id] ?? now)
        }
    }

    /// A large file that is not NDJSON: read whole and committed on its own.
    func processWhole(_ file: Spool.Claimed, claimedAt: Int64) {
        let saved = configuration.streamThreshold
        configuration.streamThreshold = Int.max
        let wasWhole = wholeOnly
        wholeOnly = true
        defer {
            configuration.streamThreshold = saved
            wholeOnly = wasWhole
        }
        process([file], claimedAt: [file.id: claimedAt])
    }

    /// The journal's MESSAGE_ID of each outcome's `file finished` entry: frozen (alerting rules key on
    /// them; docs/OPERATIONS.md lists them).
    package static let messageIDs = [
        "accepted": "a06cce9fcdf9203c84f6fcf43c309085",
        "duplicate": "caacce223c460dad9aaa278e4dfa1773",
        "partial": "6d8e8c9d88a4175ab891bcfe7cdd6dcb",
        "rejected": "6da8d4b10f92ce050ac7de87de08491a",
    ]

    /// The one log line per file: ids, kind, outcome, counts and milliseconds, never a name or value.
    func logFinished(_ file: Spool.Claimed, _ report: FileReport, claimedAt: Int64) {
        let millis = Double(Clock.monotonicNanos() - claimedAt) / 1_000_000
        var metadata: Logger.Metadata = [
            "file.id": "\(file.id)",
            "file.kind": "\(file.kind)",
            "file.outcome": "\(report.outcome.rawValue)",
            "file.stored": "\(report.stored)",
            "file.duplicates": "\(report.duplicates)",
            "file.rejected": "\(report.rejected)",
            "file.ms": "\(Int(millis.rounded()))",
            "message_id": "\(Self.messageIDs[report.outcome.rawValue] ?? "")",
        ]
        // Intake's summary: patients created and updated, visits created.
        for (key, value) in report.details { metadata["file." + key] = "\(value)" }
        logger.info("file finished", metadata: metadata)
        Counter(
            label: "carespool_files_total",
            dimensions: [("kind", file.kind), ("outcome", report.outcome.rawValue)]
        )
        .increment()
        if file.droppedAt > 0 {
            Timer(label: "carespool_file_latency_seconds", dimensions: [("kind", file.kind)])
                .recordNanoseconds(max(0, Clock.nowNanos() - file.droppedAt))
        }
    }

    typealias Prepared = (file: Spool.Claimed, prepared: PreparedFile, content: [UInt8]?)

    /// Commits `file` as rejected without reading it, `message` its one problem (a permanent read error).
    func rejectUnread(_ file: Spool.Claimed, _ message: String, claimedAt: Int64) {
        unreadVerdicts[file.id] = message
        process([file], claimedAt: [file.id: claimedAt])
    }

    func prepare(
        _ file: Spool.Claimed,
        kind: Kind,
        content: Spool.Content,
        receivedAt: String,
        fresh: Bool
    ) -> Prepared {
        switch content {
        case .notRegular(let type):
            return unread(
                file,
                kind: kind,
                receivedAt: receivedAt,
                mayHaveLedgerRow: !fresh,
                "not a regular file (\(type.rawValue)): never opened or followed"
            )
        case .grown(let size):
            return unread(
                file,
                kind: kind,
                receivedAt: receivedAt,
                mayHaveLedgerRow: !fresh,
                "the file grew to \(size) bytes after it was claimed (its sender still writes it): not read; "
                    + "drop it again once it is complete"
            )
        case .regular(let bytes):
            return prepareRead(file, kind: kind, bytes: bytes, received: nil, receivedAt: receivedAt, fresh: fresh)
        case .decompressed(let bytes, let sha256, let size):
            return prepareRead(
                file,
                kind: kind,
                bytes: bytes,
                received: (sha256, size),
                receivedAt: receivedAt,
                fresh: fresh
            )
        }
    }

    /// A file read whole: `bytes` its records' bytes, `received` the digest and size of the gzip bytes
    /// they came from (nil when they are the file's own).
    private func prepareRead(
        _ file: Spool.Claimed,
        kind: Kind,
        bytes: [UInt8],
        received: (sha256: String, size: Int)?,
        receivedAt: String,
        fresh: Bool
    ) -> Prepared {
        // NDJSON (or a report's CSV) cut short (its last line no record, with no line end): rejected whole,
        // nothing stored. A CSV row is judged as CSV: a complete last row without a line end is whole.
        let reportCSV = kind == .zoomReport && !ZoomReportReader.isJSON(bytes)
        if let truncated = reportCSV
            ? TailCheck.csv(bytes, limit: configuration.recordLimit)
            : TailCheck.ndjson(bytes, limit: configuration.recordLimit)
        {
            return unread(file, kind: kind, receivedAt: receivedAt, mayHaveLedgerRow: !fresh, problem: truncated)
        }
        let digest =
            received?.sha256
            ?? SHA256.hash(data: bytes).map { byte in
                let hex = String(byte, radix: 16)
                return byte < 16 ? "0" + hex : hex
            }.joined()
        let parsed: PreparedFile.Content
        var rejectedHeader: [UInt8]?
        switch kind {
        case .appointments: parsed = .appointments(catalog.appointments.read(bytes))
        case .zoom: parsed = .zoom(catalog.zoom.read(bytes))
        case .intake: parsed = .intake(catalog.intake.read(bytes, today: String(receivedAt.prefix(10))))
        case .zoomReport:
            let (report, header) = catalog.zoomReport.read(
                bytes,
                fileName: file.originalName,
                times: LocalTimeReader(file.localTimes)
            )
            parsed = .zoomReport(report)
            rejectedHeader = header
        }
        var prepared = PreparedFile(
            id: file.id,
            kind: kind,
            originalName: file.originalName,
            sha256: digest,
            size: received?.size ?? bytes.count,
            receivedAt: receivedAt,
            content: parsed,
            mayHaveLedgerRow: !fresh
        )
        if received != nil { prepared.decompressedSize = bytes.count }
        prepared.rejectedHeader = rejectedHeader
        prepared.sender = file.sender ?? "unknown"
        return (file, prepared, bytes)
    }

    /// A file that crashed the daemon twice, committed as rejected without reading it.
    func setAside(_ file: Spool.Claimed, kind: Kind, receivedAt: String) -> Prepared {
        unread(
            file,
            kind: kind,
            receivedAt: receivedAt,
            mayHaveLedgerRow: true,
            "carespool crashed twice while processing this file, the second time with no other file in hand: "
                + "set aside unread so that the files behind it go on. This is a bug in carespool; please report "
                + "it with the file. A fixed carespool can take it again: carespool retry \(file.id)"
        )
    }

    /// A file rejected without being read, with `message` as its one problem.
    func unread(
        _ file: Spool.Claimed,
        kind: Kind,
        receivedAt: String,
        mayHaveLedgerRow: Bool,
        _ message: String
    ) -> Prepared {
        unread(
            file,
            kind: kind,
            receivedAt: receivedAt,
            mayHaveLedgerRow: mayHaveLedgerRow,
            problem: RecordProblem(record: nil, line: nil, pointer: nil, message: message)
        )
    }

    /// A file rejected without its records being read, with `problem` as its one problem.
    func unread(
        _ file: Spool.Claimed,
        kind: Kind,
        receivedAt: String,
        mayHaveLedgerRow: Bool,
        problem: RecordProblem
    ) -> Prepared {
        var prepared = PreparedFile(
            id: file.id,
            kind: kind,
            originalName: file.originalName,
            sha256: String(repeating: "0", count: 64),
            size: 0,
            receivedAt: receivedAt,
            content: .unreadable(problem),
            mayHaveLedgerRow: mayHaveLedgerRow
        )
        prepared.sender = file.sender ?? "unknown"
        return (file, prepared, nil)
    }

    /// Writes the sidecars a verdict needs and moves the file to done/ or failed/.
    private func finish(_ file: Spool.Claimed, _ prepared: PreparedFile, _ result: CommittedFile) throws(SpoolError)
        -> Set<String>
    {
        let report = result.report
        var sidecars: [(suffix: String, bytes: [UInt8])] = []
        if report.outcome == .partial || report.outcome == .rejected {
            let json = report.json(fileID: file.id, originalName: file.originalName, kind: file.kind) + "\n"
            sidecars.append((SpoolName.errorSuffix, Array(json.utf8)))
        }
        if report.outcome == .partial, let kind = Kind(rawValue: file.kind) {
            let numbers = Set(report.rejectedRecords)
            var lines = ""
            switch prepared.content {
            case .appointments(let parsed):
                for item in parsed.items where numbers.contains(item.number) { lines += item.text + "\n" }
            case .zoom(let parsed):
                for item in parsed.items where numbers.contains(item.number) { lines += item.text + "\n" }
            case .intake(let parsed):
                for item in parsed.items where numbers.contains(item.number) { lines += item.text + "\n" }
            case .zoomReport(let parsed):
                if let header = prepared.rejectedHeader {
                    // CSV: the meeting table and header first, each row with its error and line.
                    sidecars.append(
                        (SpoolName.rejectedSuffix("csv"), header + RejectedRows.csv(parsed.items, report))
                    )
                    return try finishMoving(file, report, result, sidecars)
                }
                for item in parsed.items where numbers.contains(item.number) { lines += item.text + "\n" }
            case .unreadable, .streamed: break
            }
            // Records read from JSON are rejected as NDJSON, whatever the kind's CSV form.
            let ext = kind == .intake || kind == .zoomReport ? "ndjson" : kind.rejectedExtension
            sidecars.append((SpoolName.rejectedSuffix(ext), Array(lines.utf8)))
        }
        return try finishMoving(file, report, result, sidecars)
    }

    private func finishMoving(
        _ file: Spool.Claimed,
        _ report: FileReport,
        _ result: CommittedFile,
        _ sidecars: [(suffix: String, bytes: [UInt8])]
    ) throws(SpoolError) -> Set<String> {
        let day = String(result.finishedAt.prefix(10))
        let destination: Spool.Destination = report.outcome == .rejected ? .failed : .done(day: day)
        return try spool.finish(file, to: destination, sidecars: sidecars)
    }

    /// Schedules another try of `file` after transient trouble, with a backoff that doubles with each
    /// attempt up to `retryMax`. `reason` names the operation and errno, never a path or name; it is logged
    /// unless `logged` is false (an error of an unknown kind, whose text is not known to hold no value).
    func scheduleRetry(_ file: Spool.Claimed, reason: String, logged: Bool = true) {
        let attempts = (self.attempts[file.id] ?? 0) + 1
        self.attempts[file.id] = attempts
        let base = configuration.retryInitial.nanoseconds
        let delay = min(configuration.retryMax.nanoseconds, base << min(attempts - 1, 20))
        retries[file.id] = Retry(file: file, attempts: attempts, due: Clock.monotonicNanos() + delay, lastError: reason)
        logger.warning(
            "transient trouble, file stays in processing",
            metadata: [
                "file.id": "\(file.id)", "file.kind": "\(file.kind)", "retry.attempt": "\(attempts)",
                // The operation and errno, or the store's error (its code and message, never a value):
                // an expired password must not look like an outage.
                "retry.reason": "\(logged ? reason : "in processing/retrying.json")",
            ]
        )
    }

    private var lastRetryState: String?
    private var lastUnclaimableState: [UInt8] = []

    /// Remembers the files written in place in rename-only inboxes (`processing/written-in-place`: inode,
    /// size, mtime, ctime and the inbox's path a line; no file names), so that a restart leaves them to
    /// their writers — whatever order the inboxes are configured in then.
    func writeInPlaceState() {
        guard settle.inPlaceChanged else { return }
        var text = ""
        for (folder, stamp) in settle.inPlaceRecords() {
            text += "\(stamp.inode) \(stamp.size) \(stamp.mtime) \(stamp.ctime) "
            text += String(decoding: folder, as: UTF8.self) + "\n"
        }
        do {
            try spool.writeState(SpoolName.inPlaceState, Array(text.utf8))
            settle.inPlaceSaved()
        } catch {
            logger.error("cannot write written-in-place state", metadata: ["error": "\(error.summary)"])
        }
    }

    /// Reads back what ``writeInPlaceState()`` remembered: lines for rename-only inboxes only, others
    /// (a malformed line, an inbox since configured otherwise) ignored.
    private func restoreInPlaceState() {
        guard let bytes = spool.readState(SpoolName.inPlaceState) else { return }
        var stamps: [String: Set<SettleTracker.Stamp>] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 4)
            guard fields.count == 5, let inode = UInt64(fields[0]), let size = Int64(fields[1]),
                let mtime = Int64(fields[2]), let ctime = Int64(fields[3]),
                spool.inboxes.contains(where: { $0.path == fields[4] && $0.arrival == .rename })
            else { continue }
            stamps[String(fields[4]), default: []].insert(.init(inode: inode, size: size, mtime: mtime, ctime: ctime))
        }
        for (path, set) in stamps { settle.restoreInPlace(folder: path, stamps: set) }
    }

    /// Publishes the inbox entries that cannot be claimed to `processing/unclaimable` for `carespool status`.
    private func writeUnclaimableState() {
        let state = spool.unclaimableState()
        guard state != lastUnclaimableState else { return }
        do {
            try spool.writeState(SpoolName.unclaimableState, state)
            lastUnclaimableState = state
        } catch {
            logger.error("cannot write unclaimable state", metadata: ["error": "\(error.summary)"])
        }
    }

    /// Publishes the files waiting for a retry to `processing/retrying.json` for `carespool status`.
    private func writeRetryState() {
        var lines: [String] = []
        for retry in retries.values.sorted(by: { $0.file.id < $1.file.id }) {
            lines.append(
                "{\"id\":\(JSONValue.quoted(retry.file.id)),\"kind\":\(JSONValue.quoted(retry.file.kind)),\"attempts\":\(retry.attempts),"
                    + "\"last_error\":\(JSONValue.quoted(retry.lastError))}"
            )
        }
        let text = "[" + lines.joined(separator: ",") + "]\n"
        guard text != lastRetryState else { return }
        do {
            try spool.writeState(SpoolName.retryState, Array(text.utf8))
            lastRetryState = text
        } catch {
            logger.error("cannot write retry state", metadata: ["error": "\(error.reason)"])
        }
    }
}

/// fsyncs the folders that finished files were renamed into and out of, on a queue of its own, so that
/// a slow directory fsync (an ext4 journal commit) never stalls the files behind it. Correctness does not
/// wait on it: the ledger commit is durable before any rename, and a rename lost to a power cut leaves the
/// file in processing/, where recovery finishes it from its ledger row.
final class DirectorySync: Sendable {
    private let queue = DispatchQueue(label: "carespool.dirsync")
    private let pending = Mutex<(folders: Set<String>, scheduled: Bool)>(([], false))
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    /// Adds `folders` to the next sync pass (coalescing them with any folders already waiting).
    func schedule(_ folders: Set<String>) {
        guard !folders.isEmpty else { return }
        let start = pending.withLock { state -> Bool in
            state.folders.formUnion(folders)
            if state.scheduled { return false }
            state.scheduled = true
            return true
        }
        if start { queue.async { self.syncPending() } }
    }

    /// Waits until every scheduled folder is synced.
    func flush() {
        queue.sync { self.syncPending() }
    }

    private func syncPending() {
        let folders = pending.withLock { state -> Set<String> in
            let taken = state.folders
            state = ([], false)
            return taken
        }
        for folder in folders.sorted() {
            do {
                try Spool.syncDirectory(folder)
            } catch {
                logger.error("cannot fsync spool folder", metadata: ["error": "\(error.reason)"])
            }
        }
    }
}

/// The number of cores to spread CPU-bound work over.
enum ProcessInfoCores {
    static let count: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}

/// A dry run for partners: what processing `bytes` as `kind` would store and reject, and why, against an
/// empty in-memory database with the same schema. Writes nothing to any spool or database on disk.
package func dryRun(
    bytes: [UInt8],
    kind: Kind,
    catalog: Catalog,
    fileName: String = "dry-run",
    times: LocalTimes = LocalTimes()
) throws -> FileReport {
    let database = try AppDatabase.inMemory()
    let content: PreparedFile.Content
    switch kind {
    case .zoomReport:
        content = .zoomReport(catalog.zoomReport.read(bytes, fileName: fileName, times: LocalTimeReader(times)).0)
    case .appointments: content = .appointments(catalog.appointments.read(bytes))
    case .zoom: content = .zoom(catalog.zoom.read(bytes))
    case .intake:
        let today = String(Clock.timestamp().prefix(10))
        let first = bytes.first { ![0x20, 0x09, 0x0A, 0x0D, 0xEF, 0xBB, 0xBF].contains($0) }
        if first == UInt8(ascii: "[") || first == UInt8(ascii: "{") {
            content = .intake(catalog.intake.read(bytes, today: today))
        } else {
            content = .intake(catalog.intake.readCSV(bytes, today: today))
        }
    }
    let digest = SHA256.hash(data: bytes).map { String(format2: $0) }.joined()
    let file = PreparedFile(
        id: "dry-run",
        kind: kind,
        originalName: "dry-run",
        sha256: digest,
        size: bytes.count,
        receivedAt: Clock.timestamp(),
        content: content
    )
    return try database.commit([file], finishedAt: Clock.timestamp())[0].report
}

extension String {
    fileprivate init(format2 byte: UInt8) {
        let hex = String(byte, radix: 16)
        self = byte < 16 ? "0" + hex : hex
    }
}

extension SettleTracker {
    /// Takes in what the watcher saw (``absorb(arrivals:opened:overflow:)``).
    mutating func absorb(_ hints: WatchHints) {
        absorb(arrivals: hints.arrivals, opened: hints.opened, overflow: hints.overflow)
    }
}

extension Spool.Claimed {
    /// How its Zoom report's local times are read: its inbox's settings, kept beside it since the claim
    /// (none: no time zone, so local times are rejected, never guessed).
    var localTimes: LocalTimes { inboxNote.flatMap(LocalTimes.init(note:)) ?? LocalTimes() }
}
