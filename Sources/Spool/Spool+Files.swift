import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's own files: every one created in tmp/ under a fresh, unpredictable name with
/// O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC through tmp/'s descriptor, written, then renamed into place through
/// the target folder's descriptor. A name planted in advance (a symlink aimed at the database) is never
/// opened: the create fails on it and the next random name is taken.
extension Spool {
    /// A file being written under tmp/, to become a sidecar, a request file, a key or a state file.
    package final class TemporaryFile {
        /// Its random name in tmp/.
        package let name: String
        private let fd: Int32
        private let spool: Spool
        private var closed = false
        private let enospcWhile: String?

        init(spool: Spool, prefix: String, mode: mode_t, enospcWhile: String?) throws(SpoolError) {
            self.spool = spool
            self.enospcWhile = enospcWhile
            let tmp = try spool.folders.descriptor(spool.tmpPath)
            var attempt = 0
            while true {
                let candidate = "." + prefix + "-" + Self.randomSuffix()
                let fd = openat(tmp, candidate, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
                if fd >= 0 {
                    self.name = candidate
                    self.fd = fd
                    return
                }
                let code = errno
                attempt += 1
                // EEXIST: the name is taken (planted, or a leftover); another random name.
                guard code == EEXIST, attempt < 16 else { throw SpoolError("create", spool.tmpPath, code) }
            }
        }

        /// 16 hex digits from the system's random source.
        static func randomSuffix() -> String {
            let value = UInt64.random(in: 0...UInt64.max)
            let hex = String(value, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }

        package func append(_ bytes: [UInt8]) throws(SpoolError) {
            try append(bytes[...])
        }

        package func append(_ bytes: ArraySlice<UInt8>) throws(SpoolError) {
            if let path = enospcWhile, access(path, F_OK) == 0 { throw SpoolError("write", spool.tmpPath, ENOSPC) }
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeBytes { raw in write(fd, raw.baseAddress! + written, raw.count - written) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SpoolError("write", spool.tmpPath, errno)
                }
                written += n
            }
        }

        /// Sets extended attribute `name` (best effort: a filesystem without user attributes keeps none).
        package func setAttribute(_ name: String, _ value: String) {
            guard let set = XAttr.fset else { return }
            _ = Array(value.utf8).withUnsafeBytes { set(fd, name, $0.baseAddress, $0.count, 0) }
        }

        /// fdatasyncs and closes the file.
        package func close() throws(SpoolError) {
            guard !closed else { return }
            closed = true
            defer { Glibc.close(fd) }
            if fdatasync(fd) != 0 { throw SpoolError("fsync", spool.tmpPath, errno) }
        }

        /// Closes the file without syncing it: a caller that syncs the whole filesystem later (group commit).
        package func closeWithoutSync() throws(SpoolError) {
            guard !closed else { return }
            closed = true
            if Glibc.close(fd) != 0 { throw SpoolError("close", spool.tmpPath, errno) }
        }

        /// Removes it (an abandoned attempt).
        package func discard() {
            if !closed { Glibc.close(fd) }
            closed = true
            spool.removeTemporary(name)
        }

        deinit {
            // An attempt that failed half-way: the descriptor is not leaked.
            if !closed { Glibc.close(fd) }
        }
    }

    /// A new temporary file in tmp/, named `.<prefix>-<16 random hex digits>`, mode `mode` (0640 by
    /// default: the daemon's group — operators — reads finished files and sidecars).
    package func temporaryFile(_ prefix: String, mode: UInt32 = 0o640) throws(SpoolError) -> TemporaryFile {
        try TemporaryFile(spool: self, prefix: prefix, mode: mode, enospcWhile: faults.enospcWhile)
    }

    /// Removes `tmp/<name>` (a temporary file made by ``temporaryFile(_:mode:)``).
    package func removeTemporary(_ name: String) {
        if let tmp = try? folders.descriptor(tmpPath) { unlinkat(tmp, name, 0) }
    }

    /// Removes files left in tmp/ by an attempt that a crash or kill cut short (their random names are never
    /// taken again): those last written more than `seconds` ago. Returns how many.
    @discardableResult
    package func removeStaleTemporaries(olderThan seconds: Int64) -> Int {
        let cutoff = Clock.nowNanos() - seconds * 1_000_000_000
        var stale: [[UInt8]] = []
        try? forEachEntry(tmpPath) { fd, bytes, _, _ in
            if let entry = Self.entry(in: fd, bytes), entry.type == .regular, entry.mtime < cutoff {
                stale.append(bytes)
            }
        }
        guard let tmp = try? folders.descriptor(tmpPath) else { return 0 }
        var removed = 0
        for bytes in stale where Self.withCName(bytes, { unlinkat(tmp, $0, 0) }) == 0 { removed += 1 }
        return removed
    }

    /// Renames `tmp/<temporary>` to `<folder>/<name>`, replacing what is there.
    package func place(_ temporary: String, into folder: String, as name: String) throws(SpoolError) {
        let from = try folders.descriptor(tmpPath)
        let to = try folders.descriptor(folder)
        if renameat(from, temporary, to, name) != 0 { throw SpoolError("rename", folder, errno) }
    }

    /// Writes `bytes` to a fresh temporary file, fdatasyncs it, and renames it to `<folder>/<name>`
    /// (replacing it). `mode` 0600 for state files only the daemon reads.
    package func writeFileDurably(bytes: [UInt8], into folder: String, as name: String, mode: UInt32 = 0o640)
        throws(SpoolError)
    {
        let file = try temporaryFile("w", mode: mode)
        do throws(SpoolError) {
            try file.append(bytes)
            try file.close()
            try place(file.name, into: folder, as: name)
        } catch {
            file.discard()
            throw error
        }
    }

    /// Reads a claimed file whole, at most the size it had when opened (a writer still appending cannot
    /// make it grow without bound). Only a regular file is opened, with O_NOFOLLOW, and checked again by
    /// fstat(2). Its bytes as they are: a gzip file is decompressed only by ``readChunks``.
    package func read(_ file: Claimed) throws(SpoolError) -> Content {
        let folder = try folders.descriptor(processingPath(file.kind))
        var st = stat()
        guard fstatat(folder, file.spoolName, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw SpoolError("read", file.path, errno)
        }
        let type = FileType(mode: st.st_mode)
        guard type == .regular else { return .notRegular(type) }
        let fd = openat(folder, file.spoolName, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ELOOP { return .notRegular(.symlink) }
            throw SpoolError("read", file.path, code)
        }
        defer { close(fd) }
        guard fstat(fd, &st) == 0 else { throw SpoolError("read", file.path, errno) }
        guard FileType(mode: st.st_mode) == .regular else { return .notRegular(FileType(mode: st.st_mode)) }
        if let limit = file.readLimit, Int64(st.st_size) > limit { return .grown(Int64(st.st_size)) }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var filled = 0
        while filled < bytes.count {
            let n = bytes.withUnsafeMutableBytes { raw in
                Glibc.read(fd, raw.baseAddress! + filled, raw.count - filled)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("read", file.path, errno)
            }
            if n == 0 { break }
            filled += n
        }
        bytes.removeSubrange(filled...)
        return .regular(bytes)
    }

    /// What fstat(2) says of a claimed regular file before anything is read: its size, whether it has
    /// holes (a sparse file: SEEK_HOLE finds one before its end — holes read as NUL bytes, which no JSON
    /// or CSV holds), and its hard links (more than one: its partner can still change it through another
    /// name); and what its first bytes say of its compression. nil when it is not a regular file or is gone.
    package func sizeBeforeReading(_ file: Claimed) -> (
        size: Int64, sparse: Bool, links: Int, compression: Compression?
    )? {
        guard let folder = try? folders.descriptor(processingPath(file.kind)) else { return nil }
        let fd = openat(folder, file.spoolName, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, FileType(mode: st.st_mode) == .regular else { return nil }
        let size = Int64(st.st_size)
        let links = Int(st.st_nlink)
        var head = [UInt8](repeating: 0, count: 6)
        let got = head.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, $0.count, 0) }
        let compression = got > 1 ? Compression.of(head[0..<got]) : nil
        // st_blocks first (cheap): a file with all its blocks on disk has no hole worth naming. Then
        // SEEK_HOLE, which a filesystem without hole reporting answers with the file's end.
        let allocated = Int64(st.st_blocks) * 512
        guard size > 1 << 20, allocated < size else { return (size, false, links, compression) }
        let hole = lseek(fd, 0, 4 /* SEEK_HOLE */)
        return (size, hole >= 0 && Int64(hole) < size, links, compression)
    }

    /// Calls `body` with successive chunks (at most `chunkSize` bytes) of a claimed regular file, opened
    /// with O_NOFOLLOW: memory stays bounded whatever the file's size. A gzip file (by its magic bytes) is
    /// decompressed on the way, within ``decompression``'s limits (a ``DecompressionProblem`` when it is
    /// corrupt, truncated or a bomb); `raw` sees the bytes as they are on disk (for their digest).
    package func readChunks(
        _ file: Claimed,
        chunkSize: Int = 1 << 20,
        raw: ((ArraySlice<UInt8>) throws -> Void)? = nil,
        _ body: (ArraySlice<UInt8>) throws -> Void
    ) throws -> Void {
        let folder = try folders.descriptor(processingPath(file.kind))
        let fd = openat(folder, file.spoolName, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError("read", file.path, errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SpoolError("read", file.path, errno) }
        guard FileType(mode: st.st_mode) == .regular else { throw SpoolError("read", file.path, EINVAL) }
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        // Never past the size checked before work (``Claimed/readLimit``), else past the size at open.
        var remaining = min(file.readLimit ?? Int64(st.st_size), Int64(st.st_size))
        var gzip: GzipStream?
        var first = true
        while remaining > 0 {
            let want = Int(min(Int64(buffer.count), remaining))
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, want) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("read", file.path, errno)
            }
            if n == 0 { break }
            remaining -= Int64(n)
            // The magic bytes are in the first read (at least 2 bytes of a regular file, unless it is shorter).
            if first, Compression.of(buffer[0..<n]) == .gzip { gzip = GzipStream(limits: decompression) }
            first = false
            try raw?(buffer[0..<n])
            if let gzip { try gzip.feed(buffer[0..<n], body) } else { try body(buffer[0..<n]) }
        }
        try gzip?.finish()
    }

    /// fsyncs each folder, making renames into and out of it durable.
    package func syncDirectories(_ folders: Set<String>) throws(SpoolError) {
        for folder in folders.sorted() { try Self.syncDirectory(folder) }
    }

    package static func syncDirectory(_ folder: String) throws(SpoolError) {
        let fd = open(folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError("fsync", folder, errno) }
        defer { close(fd) }
        if fsync(fd) != 0 { throw SpoolError("fsync", folder, errno) }
    }

    /// The name of a directory entry, read only up to its NUL: a `dirent` returned by readdir(3) is only
    /// as long as its name, so loading the whole 256-byte `d_name` field could read past the end of the
    /// buffer (a SIGSEGV seen under load).
    static func nameBytes(_ entry: UnsafeMutablePointer<dirent>) -> [UInt8] {
        let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let name = UnsafeRawPointer(entry).advanced(by: offset).assumingMemoryBound(to: CChar.self)
        return Array(UnsafeRawBufferPointer(start: name, count: strlen(name)))
    }

    /// Nanoseconds since the epoch of a file time, saturated at Int64's ends: a file's times are whatever
    /// its writer set (`touch -d`, `rsync -t`, an SFTP client keeping the sender's mtime), and the year 5138
    /// overflowed the multiplication — a trap at every scan of its inbox (found by review after the fuzzer's
    /// find).
    static func nanoseconds(_ time: timespec) -> Int64 {
        let (whole, overflow) = Int64(time.tv_sec).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return time.tv_sec < 0 ? Int64.min : Int64.max }
        let (sum, carry) = whole.addingReportingOverflow(Int64(time.tv_nsec))
        return carry ? Int64.max : sum
    }

    /// The login name of `uid`, or `uid:N`.
    /// Every claim asks for its file owner's name; the password database is read once per uid.
    package static func userName(_ uid: UInt32) -> String {
        if let known = userNames.withLock({ $0[uid] }) { return known }
        let name = lookUpUserName(uid)
        userNames.withLock { $0[uid] = name }
        return name
    }

    private static let userNames = Mutex<[UInt32: String]>([:])

    private static func lookUpUserName(_ uid: UInt32) -> String {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 1024)
        if getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, let found = result,
            let name = found.pointee.pw_name
        {
            return String(cString: name)
        }
        return "uid:\(uid)"
    }
}

/// Faults the tests inject where the real one cannot be had here (a small full filesystem cannot be
/// mounted in the test sandbox): configuration, never the environment.
package struct SpoolFaults: Sendable {
    /// While a file exists at this path, every append to a temporary file fails with ENOSPC.
    package var enospcWhile: String?

    package init(enospcWhile: String? = nil) { self.enospcWhile = enospcWhile }
}

/// glibc's extended-attribute calls, which Swift's Glibc module does not export (sys/xattr.h).
enum XAttr {
    static let fget: (@convention(c) (Int32, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int)? =
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fgetxattr").map {
            unsafeBitCast(
                $0,
                to: (@convention(c) (Int32, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int).self
            )
        }
    static let fset: (@convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32)? =
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fsetxattr").map {
            unsafeBitCast(
                $0,
                to: (@convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32).self
            )
        }
}
