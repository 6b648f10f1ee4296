import Dispatch
package import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Writes request bodies into inboxes durably, sharing one `syncfs(2)` among all the requests that
/// arrive while the previous one runs (group commit): tmp file → rename into the inbox (a fresh id: no
/// name to replace)
/// → syncfs of the spool's filesystem → only then the caller's `await` returns and it may answer 202.
package final class DurableWriter: Sendable {
    private let spool: Spool
    private let ids = IDGenerator()
    private let io = DispatchQueue(label: "carespool.http.io", attributes: .concurrent)
    private let flusher = DispatchQueue(label: "carespool.http.fsync")
    private let waiting = Mutex<(list: [CheckedContinuation<Void, any Error>], scheduled: Bool)>(([], false))

    package init(spool: Spool) { self.spool = spool }

    /// Writes `bytes` as `<id>.json` into `inbox`; returns the id once the file is on disk.
    package func write(_ bytes: [UInt8], into inbox: Spool.Inbox) async throws -> String {
        let id = ids.next()
        let spool = self.spool
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            io.async {
                do {
                    let temporary = ".http-" + id
                    let file = try spool.temporaryFile(temporary)
                    do {
                        try file.append(bytes)
                        try file.closeWithoutSync()
                    } catch {
                        file.discard()
                        throw error
                    }
                    try spool.publish(temporaryName: temporary, into: inbox, as: id + ".json")
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                self.enqueue(continuation)
            }
        }
        return id
    }

    private func enqueue(_ continuation: CheckedContinuation<Void, any Error>) {
        let start = waiting.withLock { state -> Bool in
            state.list.append(continuation)
            if state.scheduled { return false }
            state.scheduled = true
            return true
        }
        if start { flusher.async { self.flush() } }
    }

    /// One syncfs for everyone waiting; requests arriving meanwhile wait for the next one.
    private func flush() {
        let batch = waiting.withLock { state -> [CheckedContinuation<Void, any Error>] in
            let taken = state.list
            state = ([], false)
            return taken
        }
        let fd = open(spool.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        var failure: SpoolError?
        if fd < 0 {
            failure = SpoolError("syncfs", spool.root, errno)
        } else {
            if Self.syncfs(fd) != 0 { failure = SpoolError("syncfs", spool.root, errno) }
            close(fd)
        }
        for continuation in batch {
            if let failure { continuation.resume(throwing: failure) } else { continuation.resume() }
        }
    }

    /// glibc's syncfs(2), which Swift's Glibc module does not export (it is a GNU extension).
    private static let syncfs: @convention(c) (Int32) -> Int32 = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syncfs") else {
            // Without syncfs: sync(2) flushes every filesystem — slower, never less durable.
            return { _ in
                sync()
                return 0
            }
        }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Int32).self)
    }()
}
