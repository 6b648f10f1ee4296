import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// A file that crashes the daemon must not crash it forever: the replay of `processing/` at start would
/// meet the same file again, and every file behind it would wait.
///
/// While a batch is processed, its ids are kept in a buffer prepared in advance. When the process dies
/// of a fatal signal (a Swift trap is SIGILL or SIGTRAP; also SIGSEGV, SIGBUS, SIGFPE, SIGABRT), the
/// handler appends those ids to `processing/.crashed` — open, write, close: async-signal-safe — and
/// then hands the signal on to the handler that was there before (Swift's backtracer, or the default),
/// so the crash is reported as before. kill -9 and power cuts write nothing: only a crash of our own.
///
/// At the next start (`suspects(in:)`), a recovered file named there once is processed in a batch of its
/// own, so that an innocent batch-mate is not blamed; a file named twice — it crashed the daemon again,
/// alone — is set aside in `failed/` with that reason (`quarantined`) and the files behind it go on.
enum CrashGuard {
    /// The ids of the batch in hand, one per line, and their length (0: none).
    nonisolated(unsafe) private static let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
    private static let capacity = 64 * 1024
    nonisolated(unsafe) private static let length = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    /// The descriptor of `processing/` and the marker's name there, as a C string.
    nonisolated(unsafe) private static let folder = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    nonisolated(unsafe) private static let markerCName = UnsafeMutablePointer<CChar>.allocate(capacity: 64)
    /// The handlers that were installed before ours, by signal number.
    nonisolated(unsafe) private static let previous = UnsafeMutablePointer<sigaction>.allocate(capacity: 65)
    static let signals: [Int32] = [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE, SIGABRT]

    /// Installs the handlers; the marker goes into the spool's state folder (`processing/`).
    static func install(spool: Spool) throws(SpoolError) {
        length.pointee = 0
        folder.pointee = try spool.stateFolderDescriptor()
        for (index, byte) in SpoolName.crashMarker.utf8CString.prefix(63).enumerated() { markerCName[index] = byte }
        markerCName[min(63, SpoolName.crashMarker.utf8.count)] = 0
        for signal in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_sigaction = { signal, info, _ in
                // Sent by another process (systemd's watchdog sends SIGABRT, an operator `kill -ABRT`):
                // no crash of ours, and no verdict on the files in hand — they resume after the restart.
                if let info, info.pointee.si_code <= 0, info.pointee._sifields._kill.si_pid != getpid() {
                    CrashGuard.handOn(signal)
                    return
                }
                CrashGuard.handle(signal)
            }
            action.sa_flags = SA_SIGINFO | SA_ONSTACK
            sigemptyset(&action.sa_mask)
            sigaction(signal, &action, previous + Int(signal))
        }
    }

    /// Runs `work` with `ids` named as the batch in hand — besides the batch already named, when small
    /// files are committed between two chunks of a large one (both are then suspects of a crash there).
    static func during<T>(_ ids: [String], _ work: () throws -> T) rethrows -> T {
        alternateStack()
        let named = length.pointee
        var count = named
        for id in ids {
            guard count + id.utf8.count + 1 <= capacity else { break }
            for byte in id.utf8 {
                buffer[count] = byte
                count += 1
            }
            buffer[count] = 0x0A
            count += 1
        }
        length.pointee = count
        defer { length.pointee = named }
        return try work()
    }

    /// Gives the calling thread a signal stack of its own, once: a stack overflow (a recursion too deep)
    /// is a SIGSEGV that the handler can only run for on another stack — without one it died unheard, no
    /// marker was written, and the file crashed the daemon again at every start. The handlers ask for it
    /// (SA_ONSTACK); each thread that processes batches gets one the first time (64 KiB, kept).
    private static func alternateStack() {
        var current = stack_t()
        guard sigaltstack(nil, &current) == 0, current.ss_flags & Int32(SS_DISABLE) != 0 else { return }
        let size = 64 * 1024
        guard let memory = malloc(size) else { return }
        var stack = stack_t(ss_sp: memory, ss_flags: 0, ss_size: size)
        if sigaltstack(&stack, nil) != 0 { free(memory) }
    }

    /// Dies of a signal sent from outside with its default action (async-signal-safe), without naming
    /// the batch: Swift's backtracer, the handler before ours, takes a signal it did not see raised for
    /// no crash and returns, and the daemon went on (found by `ProgressTests`: an outside SIGABRT).
    private static func handOn(_ signal: Int32) {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = SIG_DFL
        sigemptyset(&action.sa_mask)
        sigaction(signal, &action, nil)
        raise(signal)
    }

    /// The signal handler: only async-signal-safe calls.
    private static func handle(_ signal: Int32) {
        let count = length.pointee
        if count > 0 {
            // openat(2) through the folder's descriptor, never following a symlink: async-signal-safe.
            let fd = openat(folder.pointee, markerCName, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 {
                _ = write(fd, buffer, count)
                close(fd)
            }
        }
        // Hand on: the previous handler (or the default action) meets the signal when the faulting
        // instruction runs again, or at once for a raised one.
        sigaction(signal, previous + Int(signal), nil)
        if signal == SIGABRT { raise(signal) }
    }

    /// How often each id was named in the marker, for ids still in `present`; the marker is rewritten to
    /// hold only those (ids are never reused, so the rest is history).
    static func suspects(spool: Spool, present: Set<String>) -> [String: Int] {
        guard let text = spool.readState(SpoolName.crashMarker) else { return [:] }
        var counts: [String: Int] = [:]
        for line in text.split(separator: 0x0A) {
            let id = String(decoding: line, as: UTF8.self)
            if present.contains(id) { counts[id, default: 0] += 1 }
        }
        var kept = ""
        for (id, count) in counts.sorted(by: { $0.key < $1.key }) {
            kept += String(repeating: id + "\n", count: count)
        }
        try? spool.writeState(SpoolName.crashMarker, Array(kept.utf8))
        return counts
    }
}
