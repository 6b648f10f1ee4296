#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's state files in `processing/`: the retry state (`retrying.json`, for `carespool status`) and
/// the crash guard's marker (`.crashed`). They hold ids, kinds, counts and errno names, never a path or a
/// file name; mode 0600, in a folder only the daemon's user may enter.
extension Spool {
    /// `processing/`, where the state files live.
    package var stateFolder: String { root + "/processing" }

    /// Replaces state file `name` (``SpoolName/retryState``, ``SpoolName/crashMarker``) with `bytes`,
    /// durably; an empty `bytes` removes it.
    package func writeState(_ name: String, _ bytes: [UInt8]) throws(SpoolError) {
        if bytes.isEmpty {
            let fd = try folders.descriptor(stateFolder)
            if unlinkat(fd, name, 0) != 0 && errno != ENOENT { throw SpoolError("remove", stateFolder, errno) }
            return
        }
        try writeFileDurably(bytes: bytes, into: stateFolder, as: name, mode: 0o600)
    }

    /// State file `name`, at most `limit` bytes of it (opened O_NOFOLLOW); nil when there is none.
    package func readState(_ name: String, limit: Int = 16 << 20) -> [UInt8]? {
        guard let dir = try? folders.descriptor(stateFolder) else { return nil }
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, FileType(mode: st.st_mode) == .regular else { return nil }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while bytes.count < limit {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        return Array(bytes.prefix(limit))
    }

    /// A descriptor of `processing/` for the crash guard's signal handler, which may only openat(2) in it
    /// (async-signal-safe); kept open for the process's life.
    package func stateFolderDescriptor() throws(SpoolError) -> Int32 {
        try folders.descriptor(stateFolder)
    }
}
