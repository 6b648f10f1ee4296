// Spool: the spool directory's layout and every move a file makes through it.
//
// The ONLY code that names, creates, renames or removes anything in the spool (Postfix's mail_queue.h):
// the `<id>--<name>` form and the sidecar suffixes (Spool+Names), our own files (Spool+Files: every one
// created under a fresh random name with O_CREAT|O_EXCL|O_NOFOLLOW), discovery and claims (Spool+Claim),
// finishing, requeue and purge (Spool+Finish), HTTP drops and idempotency keys (Spool+Drop), and the
// daemon's state files (Spool+State).
//
// Trusts nothing it finds in an inbox: names are opaque bytes (any bytes up to 255, canonically equivalent
// names side by side), and only regular files are ever opened (a symlink, FIFO, socket, device or
// directory is never followed or read). Folders are opened once, O_DIRECTORY|O_NOFOLLOW, and used through
// their descriptors (openat, renameat, linkat, unlinkat, fstatat(AT_SYMLINK_NOFOLLOW)): a folder swapped
// for a symlink after start is never followed, and an inbox replaced by another folder is reported and
// no longer used (``SpoolError/isInboxReplaced``).
//
// Layout (DESIGN.md, with processing/ split by kind so that recovery knows a claimed file's kind):
//   tmp/                       our own writes, fsynced, then renamed into place
//   inbox/<kind>/              producers drop files here; we only ever rename out of it
//   processing/<kind>/         claimed files: <id>--<original name>
//   done/<kind>/<yyyy-mm-dd>/  <id>--<original name>
//   failed/<kind>/             <id>--<original name>, <same>.error.json, <same>.rejected.<ext>
//   keys/<kind>/               HTTP idempotency keys

import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A spool directory tree.
package struct Spool: Sendable {
    /// An inbox folder and the kind of data dropped into it.
    package struct Inbox: Sendable, Hashable {
        package var path: String
        package var kind: String
        /// How a file counts as arrived in it (``Arrival``).
        package var arrival: Arrival
        /// What the files claimed from it carry beside them until their verdict (``SpoolName/inboxNote``):
        /// how to read them that the kind alone does not say (a Zoom report inbox's time zone).
        package var note: String?

        package init(path: String, kind: String, arrival: Arrival = .close, note: String? = nil) {
            self.path = path
            self.kind = kind
            self.arrival = arrival
            self.note = note
        }
    }

    /// The last thing inotify saw become of a name (later events replace earlier ones).
    package enum ArrivalHint: Sendable, Hashable {
        /// Renamed in (IN_MOVED_TO): arrived whole.
        case renamed
        /// Closed after writing under its name (IN_CLOSE_WRITE): written in place.
        case closed
        /// Created under its name (IN_CREATE): by open(2) for writing, or by link(2) (sftp-server's
        /// rename); a create that no write-close follows was a link.
        case created
    }

    /// How a file counts as arrived in an inbox, and so may be claimed.
    package enum Arrival: String, Sendable, Hashable, CaseIterable {
        /// Renamed or linked in, or written in place under its name and closed (then left alone for the
        /// close grace), or (no event seen) unchanged for the settle interval.
        case close
        /// Only renamed or linked in: a file written in place under its name is its writer's, never claimed
        /// (a client that uploads to a temporary name and renames it when done; a killed upload stays).
        case rename
    }

    /// What a scan found in an inbox.
    package struct Entry: Sendable, Equatable {
        /// The name as text: the name itself when it is UTF-8, else its bytes with every byte of an invalid
        /// sequence written `%XX` (``SpoolName/display(_:)``). For logs' counts, the ledger and people.
        package var name: String
        /// The name's exact bytes, as the directory holds them: what claims and bookkeeping use.
        package var bytes: [UInt8]
        package var type: FileType
        package var size: Int64
        /// Modification time in nanoseconds since the epoch.
        package var mtime: Int64
        package var inode: UInt64
        /// Status change time in nanoseconds since the epoch (-1 when the scan did not stat): later than
        /// `mtime` when the file was renamed, linked, chmod'ed or given times after its last write.
        package var ctime: Int64

        package init(
            name: String,
            bytes: [UInt8],
            type: FileType,
            size: Int64,
            mtime: Int64,
            inode: UInt64,
            ctime: Int64 = -1
        ) {
            self.name = name
            self.bytes = bytes
            self.type = type
            self.size = size
            self.mtime = mtime
            self.inode = inode
            self.ctime = ctime
        }
    }

    /// A file's type as lstat(2) sees it (symlinks are never followed).
    package enum FileType: String, Sendable {
        case regular, directory, symlink, fifo, socket, characterDevice = "character device",
            blockDevice = "block device", unknown

        init(mode: mode_t) {
            switch mode & S_IFMT {
            case S_IFREG: self = .regular
            case S_IFDIR: self = .directory
            case S_IFLNK: self = .symlink
            case S_IFIFO: self = .fifo
            case S_IFSOCK: self = .socket
            case S_IFCHR: self = .characterDevice
            case S_IFBLK: self = .blockDevice
            default: self = .unknown
            }
        }

        init(direntType: UInt8) {
            switch Int32(direntType) {
            case Int32(DT_REG): self = .regular
            case Int32(DT_DIR): self = .directory
            case Int32(DT_LNK): self = .symlink
            case Int32(DT_FIFO): self = .fifo
            case Int32(DT_SOCK): self = .socket
            case Int32(DT_CHR): self = .characterDevice
            case Int32(DT_BLK): self = .blockDevice
            default: self = .unknown
            }
        }
    }

    /// A file claimed into processing/.
    package struct Claimed: Sendable, Hashable {
        package var id: String
        package var kind: String
        /// The name it had in its inbox, whole (as text, ``Entry/name``): the ledger's and the sidecar's.
        package var originalName: String
        /// The name kept after `<id>--` on disk: the original name, shortened only where `<id>--<name>` and
        /// its longest sidecar suffix would not fit in 255 bytes, keeping its extension.
        package var storedName: String
        /// Its path under processing/.
        package var path: String
        /// Its name under processing/, `<id>--<stored name>`.
        package var spoolName: String { SpoolName.claimed(id: id, name: storedName) }
        /// When it was dropped: its inode's change time just before the claim (the rename or last write
        /// into the inbox), nanoseconds since the epoch; 0 when unknown (found in processing/ at start).
        package var droppedAt: Int64 = 0
        /// Who dropped it: the sender an HTTP request file names (``Spool/senderAttribute``), else the
        /// Unix user owning the file as claimed (`uid:N` when the user has no name); nil when unknown.
        package var sender: String?
        /// The most bytes any read of it takes: the size checked before work. The partner who dropped it
        /// may still hold it (an open descriptor, another hard link) and grow it after the claim; what it
        /// adds is never read. nil: the size at each open.
        package var readLimit: Int64?
        /// Its inbox's ``Inbox/note`` when it was claimed, kept beside it in processing/ (nil: none).
        package var inboxNote: String?

        package init(
            id: String,
            kind: String,
            originalName: String,
            storedName: String? = nil,
            path: String,
            droppedAt: Int64 = 0,
            sender: String? = nil
        ) {
            self.id = id
            self.kind = kind
            self.originalName = originalName
            self.storedName = storedName ?? originalName
            self.path = path
            self.droppedAt = droppedAt
            self.sender = sender
        }
    }

    /// The extended attribute in which the HTTP endpoint names a request file's sender.
    package static let senderAttribute = "user.carespool.sender"
    /// The extended attribute in which the HTTP endpoint and `drop` give a file the id they answered
    /// with, so that the sender's id and the operator's (ledger, `show`, `GET /spool/{id}`, messages)
    /// are one.
    package static let idAttribute = "user.carespool.id"

    /// Whether `text` has a spool id's form: a UUID in lower-case hex, 8-4-4-4-12 (never `--`, the
    /// separator of a claimed file's name).
    package static func isID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard byte == 0x2D else { return false }
            } else if !((byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x66)) {
                return false
            }
        }
        return true
    }

    /// Where a finished file goes.
    package enum Destination: Sendable {
        /// done/<kind>/<day>/, `day` as yyyy-mm-dd.
        case done(day: String)
        case failed
    }

    /// A file's content, or why it has none.
    package enum Content: Sendable {
        case regular([UInt8])
        /// A gzip file's one document, decompressed (by the streaming path), and the digest and size of
        /// the bytes as received, for the ledger.
        case decompressed([UInt8], sha256: String, size: Int)
        case notRegular(FileType)
        /// It grew past its ``Claimed/readLimit`` after the claim (to this size): not read.
        case grown(Int64)
    }

    /// The spool's root folder.
    package let root: String
    /// How far a gzip file may expand as it is read (`[compression]`).
    package var decompression = DecompressionLimits()
    /// The spool's own inboxes, one per kind, plus any extra folders mapped to a kind.
    package var inboxes: [Inbox]
    package let kinds: [String]
    /// The folders' descriptors, opened once; shared by every copy of this value.
    let folders: Folders
    /// Faults the tests inject (none by default).
    package var faults = SpoolFaults()

    /// - Parameters:
    ///   - root: the spool folder.
    ///   - kinds: the data kinds; each gets `inbox/<kind>/` and its processing, done and failed folders.
    ///   - extraInboxes: more folders to watch (an SFTP partner's upload folder), each mapped to a kind.
    package init(root: String, kinds: [String], extraInboxes: [Inbox] = []) {
        let trimmed = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
        self.root = trimmed
        self.kinds = kinds
        self.inboxes = kinds.map { Inbox(path: trimmed + "/inbox/" + $0, kind: $0) } + extraInboxes
        self.folders = Folders(root: trimmed)
    }

    package var tmpPath: String { root + "/tmp" }
    package func processingPath(_ kind: String) -> String { root + "/processing/" + kind }
    package func donePath(_ kind: String) -> String { root + "/done/" + kind }
    package func failedPath(_ kind: String) -> String { root + "/failed/" + kind }
    package func inboxPath(_ kind: String) -> String { root + "/inbox/" + kind }
    /// Idempotency keys of HTTP senders (`webhook-id`), one small file per key holding the spool id.
    package func keysPath(_ kind: String) -> String { root + "/keys/" + kind }

    /// Creates every folder of the layout that is missing: the spool's own folders 0750 (the daemon's
    /// group reads them: operators), tmp/, processing/ and keys/ 0700; an existing folder keeps its
    /// mode (systemd-tmpfiles sets the installed ones, docs/SECURITY.md).
    package func prepare() throws(SpoolError) {
        try Self.makeDirectory(root, mode: 0o750)
        let layout: [(String, mode_t)] =
            [
                ("tmp", 0o700), ("inbox", 0o750), ("processing", 0o700), ("done", 0o750), ("failed", 0o750),
                ("keys", 0o700),
            ]
            + kinds.flatMap { kind -> [(String, mode_t)] in
                [
                    ("inbox/" + kind, 0o750), ("processing/" + kind, 0o700), ("done/" + kind, 0o750),
                    ("failed/" + kind, 0o750), ("keys/" + kind, 0o700),
                ]
            }
        for (folder, mode) in layout {
            try Self.makeDirectory(root + "/" + folder, mode: mode)
            Self.tighten(root + "/" + folder, isPrivate: mode == 0o700)
        }
        Self.tighten(root, isPrivate: false)
        for inbox in inboxes where !inbox.path.hasPrefix(root + "/inbox/") {
            try Self.makeDirectory(inbox.path, mode: 0o750)
        }
    }

    /// Whether `name` is a writer's name for an incomplete file: a dotfile (rsync's `.name.a1B2c3`),
    /// `*.tmp`, `*.part`, `*.filepart` or `*~`.
    package static func isIncompleteName(_ name: String) -> Bool {
        isIncompleteName(Array(name.utf8))
    }

    /// ``isIncompleteName(_:)-(String)`` on a name's bytes.
    package static func isIncompleteName(_ bytes: [UInt8]) -> Bool {
        func ends(_ suffix: StaticString) -> Bool {
            let tail = UnsafeBufferPointer(start: suffix.utf8Start, count: suffix.utf8CodeUnitCount)
            return bytes.count >= tail.count && bytes.suffix(tail.count).elementsEqual(tail)
        }
        return bytes.first == UInt8(ascii: ".") || ends(".tmp") || ends(".part") || ends(".filepart") || ends("~")
    }

    /// Takes from a folder of the daemon's own what an earlier version gave away: group write and other
    /// read/write (a partner in the daemon's group could once read everything), and for a private folder
    /// (tmp/, processing/, keys/) every group and other bit. Only folders the daemon's user owns; the
    /// setgid bit and other's traverse bit (the spool root's, for partners' folders) are kept.
    static func tighten(_ path: String, isPrivate: Bool) {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid() else { return }
        let mode = st.st_mode & 0o7777
        let tightened = mode & ~(isPrivate ? 0o077 : 0o026)
        if tightened != mode { chmod(path, tightened) }
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o750) throws(SpoolError) {
        if mkdir(path, mode) != 0 {
            let code = errno
            if code == EEXIST { return }
            if code == ENOENT {
                let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
                guard !parent.isEmpty, parent != path else { throw SpoolError("mkdir", path, code) }
                try makeDirectory(parent, mode: mode)
                if mkdir(path, mode) != 0 && errno != EEXIST { throw SpoolError("mkdir", path, errno) }
                return
            }
            throw SpoolError("mkdir", path, code)
        }
    }
}

/// The descriptors of a spool's folders, each opened once with O_DIRECTORY|O_NOFOLLOW and kept for the
/// spool's life; every operation in a folder goes through its descriptor. Also what the claimers learned
/// that the HTTP door's counts must know: entries that cannot be claimed.
final class Folders: Sendable {
    let root: String
    private let state = Mutex<State>(State())

    struct State {
        var descriptors: [String: Int32] = [:]
        /// Each inbox's folder as first opened (device, inode): a different one later means it was replaced.
        var identities: [String: (dev: UInt64, ino: UInt64)] = [:]
        /// Inboxes found replaced: no longer used, said once.
        var replaced: Set<String> = []
        /// Entries that cannot be claimed (a permanent error renaming them): each inbox's inodes, with the
        /// error. Not counted as pending, not tried again while the inode stands in the folder.
        var unclaimable: [String: [UInt64: String]] = [:]
    }

    init(root: String) { self.root = root }

    deinit {
        for fd in state.withLock({ $0.descriptors.values }) { close(fd) }
    }

    /// The descriptor of `path` (a spool folder or an inbox), opened on first use. A folder under the spool
    /// root is opened component by component from the root, each O_NOFOLLOW: no symlink on the way is
    /// followed. Another folder (an extra inbox) is opened by its path, its last component O_NOFOLLOW.
    func descriptor(_ path: String) throws(SpoolError) -> Int32 {
        if let fd = state.withLock({ $0.descriptors[path] }) { return fd }
        let fd: Int32
        if path == root {
            fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        } else if path.hasPrefix(root + "/") {
            let parent = try descriptor(String(path[..<path.lastIndex(of: "/")!]))
            fd = openat(parent, String(path[path.index(after: path.lastIndex(of: "/")!)...]), Self.flags)
        } else {
            fd = open(path, Self.flags)
        }
        guard fd >= 0 else {
            let code = errno
            // O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on anything else: ENOTDIR.
            throw SpoolError("open folder", path, code)
        }
        var st = stat()
        fstat(fd, &st)
        return state.withLock { state -> Int32 in
            if let other = state.descriptors[path] {
                close(fd)
                return other
            }
            state.descriptors[path] = fd
            state.identities[path] = (UInt64(st.st_dev), UInt64(st.st_ino))
            return fd
        }
    }

    static let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC

    /// Checks that `path` still names the folder first opened there (not a symlink, not another folder).
    /// A replaced one is marked and reported by ``SpoolError/isInboxReplaced`` from then on.
    func checkIdentity(_ path: String) throws(SpoolError) {
        if state.withLock({ $0.replaced.contains(path) }) { throw SpoolError("inbox replaced", path, ESTALE) }
        _ = try descriptor(path)
        var st = stat()
        let same: Bool
        if lstat(path, &st) != 0 {
            same = false
        } else {
            let known = state.withLock { $0.identities[path] }
            same =
                (st.st_mode & S_IFMT) == S_IFDIR && known?.dev == UInt64(st.st_dev) && known?.ino == UInt64(st.st_ino)
        }
        if !same {
            state.withLock { _ = $0.replaced.insert(path) }
            throw SpoolError("inbox replaced", path, ESTALE)
        }
    }

    /// Forgets the descriptor of `path` (a folder removed by purge).
    func forget(_ path: String) {
        if let fd = state.withLock({ $0.descriptors.removeValue(forKey: path) }) { close(fd) }
    }

    /// Marks inode `inode` of `folder` unclaimable; true when it was not already.
    func markUnclaimable(_ folder: String, inode: UInt64, error: String) -> Bool {
        state.withLock { $0.unclaimable[folder, default: [:]].updateValue(error, forKey: inode) == nil }
    }

    func isUnclaimable(_ folder: String, inode: UInt64) -> Bool {
        state.withLock { $0.unclaimable[folder]?[inode] != nil }
    }

    /// Keeps only the unclaimable inodes of `folder` that are in `present`.
    func pruneUnclaimable(_ folder: String, present: Set<UInt64>) {
        state.withLock { state in
            guard let known = state.unclaimable[folder] else { return }
            state.unclaimable[folder] = known.filter { present.contains($0.key) }
        }
    }

    var unclaimable: [String: [UInt64: String]] { state.withLock { $0.unclaimable } }

    func setUnclaimable(_ entries: [String: [UInt64: String]]) { state.withLock { $0.unclaimable = entries } }

    var unclaimableTotal: Int { state.withLock { $0.unclaimable.values.reduce(0) { $0 + $1.count } } }
}

/// A failed file-system operation: which, on what path, and errno.
package struct SpoolError: Error, Sendable, CustomStringConvertible {
    package var operation: String
    package var path: String
    package var code: Int32

    package init(_ operation: String, _ path: String, _ code: Int32) {
        self.operation = operation
        self.path = path
        self.code = code
    }

    /// Trouble that is no verdict on the file (disk full, I/O error, out of descriptors): retry later with
    /// backoff. Everything else — EACCES, EPERM, ENAMETOOLONG, ELOOP, EISDIR, … — is permanent: a verdict.
    package var isTransient: Bool {
        [EIO, ENOSPC, EDQUOT, ENOMEM, EMFILE, ENFILE, EAGAIN, EINTR, EBUSY, EROFS, ETXTBSY].contains(code)
    }

    /// The inbox folder was replaced (by a symlink or another folder) after the daemon opened it.
    package var isInboxReplaced: Bool { code == ESTALE && operation == "inbox replaced" }

    /// The folder was replaced, or is a symlink or not a folder now: not to be used.
    package var isNotAFolderAnyMore: Bool {
        isInboxReplaced || (operation == "open folder" && (code == ELOOP || code == ENOTDIR))
    }

    /// The errno name and text, e.g. `ENOSPC (No space left on device)`.
    package var reason: String {
        Self.errnoName(code) + " (" + String(cString: strerror(code)) + ")"
    }

    /// The operation and errno name without the path (which may carry a patient's name): what state
    /// files and logs hold, e.g. `read: EIO`.
    package var summary: String { operation + ": " + Self.errnoName(code) }

    package var description: String { "\(operation) \(path): \(reason)" }

    /// The symbolic name of an errno value (`EACCES`), or `errno N`.
    package static func errnoName(_ code: Int32) -> String {
        let names: [Int32: String] = [
            EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO", EBADF: "EBADF",
            EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EBUSY: "EBUSY", EEXIST: "EEXIST",
            EXDEV: "EXDEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE",
            EMFILE: "EMFILE", ETXTBSY: "ETXTBSY", EFBIG: "EFBIG", ENOSPC: "ENOSPC", EROFS: "EROFS",
            EMLINK: "EMLINK", ENAMETOOLONG: "ENAMETOOLONG", ENOTEMPTY: "ENOTEMPTY", ELOOP: "ELOOP",
            EDQUOT: "EDQUOT", ESTALE: "ESTALE", EOVERFLOW: "EOVERFLOW", ENODATA: "ENODATA",
        ]
        return names[code] ?? "errno \(code)"
    }
}
