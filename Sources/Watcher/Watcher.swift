// Watcher: inotify on the inbox folders, turned into "look at this folder now" hints.
//
// Knows directories and names, never payloads. Every event is only a hint: the processor rescans the
// folder and decides. Raw inotify through Glibc (inotify_init1 / inotify_add_watch), a non-blocking fd
// polled on a thread of its own, feeding an AsyncStream of wake-ups. It also wakes the stream every
// `tick` so the processor's timers (settle checks, periodic rescans, retries) run without a second clock.
// Opens and closes of files are counted too (IN_OPEN, IN_CLOSE_*), so that a file a writer still holds
// open is not claimed half-written when the writer pauses longer than the settle interval.

import Foundation
package import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What the watcher saw since the last ``Watcher/drain()``.
package struct WatchHints: Sendable {
    /// `<folder>/<name>` → the last of IN_MOVED_TO, IN_CLOSE_WRITE and IN_CREATE seen for it, as the
    /// path's exact bytes (two canonically equivalent names are two files): a file renamed in and then
    /// rewritten in place is a file written in place.
    package var arrivals: [[UInt8]: Spool.ArrivalHint] = [:]
    /// Folders with any event (a create included): look at them.
    package var folders: Set<String> = []
    /// The kernel dropped events (IN_Q_OVERFLOW) or a watch went away: rescan everything, and forget
    /// which files are open (the counts below may have missed events).
    package var overflow = false
    /// `<folder>/<name>` → opens minus closes seen since the last drain (IN_OPEN counts one up,
    /// IN_CLOSE_WRITE and IN_CLOSE_NOWRITE one down). inotify does not say whether an open was for
    /// writing, so a reader holding a file counts too.
    package var opened: [[UInt8]: Int] = [:]

    package init() {}
}

/// Watches folders with inotify on its own thread.
package final class Watcher: Sendable {
    private let fd: Int32
    private let stopPipe: (read: Int32, write: Int32)
    private let folders: [Int32: String]
    private let hints = Mutex(WatchHints())
    private let stopped = Atomic<Bool>(false)
    private let tick: Duration
    private let continuation: AsyncStream<Void>.Continuation
    /// Yields whenever there are hints to drain, and at least every `tick`. Ends after ``stop()``.
    package let wakeups: AsyncStream<Void>

    /// Starts watching `folders` for IN_CLOSE_WRITE, IN_MOVED_TO and IN_CREATE (sftp-server's link()),
    /// and IN_OPEN and IN_CLOSE_NOWRITE to know which files are held open.
    package init(folders paths: [String], tick: Duration = .milliseconds(200)) throws(WatcherError) {
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw WatcherError(operation: "inotify_init1", path: nil, code: errno) }
        var folders: [Int32: String] = [:]
        // IN_DONT_FOLLOW: an inbox that is a symlink is refused, never watched through.
        let mask = UInt32(
            IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_OPEN | IN_CLOSE_NOWRITE | IN_ONLYDIR | IN_DONT_FOLLOW
        )
        for path in paths {
            let wd = inotify_add_watch(fd, path, mask)
            guard wd >= 0 else {
                let code = errno
                close(fd)
                throw WatcherError(operation: "inotify_add_watch", path: path, code: code)
            }
            folders[wd] = path
        }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            close(fd)
            throw WatcherError(operation: "pipe2", path: nil, code: errno)
        }
        for end in pipeFDs {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        self.fd = fd
        self.folders = folders
        self.stopPipe = (pipeFDs[0], pipeFDs[1])
        self.tick = tick
        (wakeups, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let thread = Thread { [self] in self.loop() }
        thread.name = "carespool-inotify"
        thread.start()
    }

    /// Takes the hints gathered so far.
    package func drain() -> WatchHints {
        hints.withLock { current in
            let taken = current
            current = WatchHints()
            return taken
        }
    }

    /// Stops the thread and ends ``wakeups``. Safe to call more than once.
    package func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
    }

    deinit {
        // The thread holds `self` until its loop has ended, so no one can write to this end any more.
        close(stopPipe.write)
    }

    private func loop() {
        let tickMillis = Int32(tick.components.seconds * 1_000 + tick.components.attoseconds / 1_000_000_000_000_000)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var pfds = [
            pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0),
        ]
        // The processor's own scans open the watched folders (IN_OPEN and IN_CLOSE_NOWRITE on the folder
        // itself): those events are read and dropped, and wake no one — or every scan would cause the next.
        var lastWake = Self.monotonicMillis()
        while true {
            let wait = max(0, tickMillis - Int32(clamping: Self.monotonicMillis() - lastWake))
            let ready = poll(&pfds, 2, wait)
            if ready < 0 && errno != EINTR { break }
            if pfds[1].revents != 0 { break }
            let found = pfds[0].revents != 0 && readEvents(into: &buffer)
            let now = Self.monotonicMillis()
            if found || now - lastWake >= Int64(tickMillis) {
                lastWake = now
                continuation.yield()
            }
        }
        continuation.finish()
        close(fd)
        close(stopPipe.read)
    }

    private static func monotonicMillis() -> Int64 { Clock.monotonicNanos() / 1_000_000 }

    /// Reads every pending event into the hints; true when any of them is worth a look.
    private func readEvents(into buffer: inout [UInt8]) -> Bool {
        var any = false
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n <= 0 { return any }
            var found = WatchHints()
            buffer.withUnsafeBytes { raw in
                var offset = 0
                while offset + 16 <= n {
                    let wd = raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                    let mask = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                    let length = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    let nameBytes = UnsafeRawBufferPointer(rebasing: raw[(offset + 16)..<(offset + 16 + length)])
                    offset += 16 + length
                    if mask & UInt32(IN_Q_OVERFLOW) != 0 || mask & UInt32(IN_IGNORED) != 0 {
                        found.overflow = true
                        continue
                    }
                    // Events on the watched folder itself have no name; a folder inside it opened or closed
                    // says nothing either (one created or moved in does: it goes to failed/).
                    let isDirectory = mask & UInt32(IN_ISDIR) != 0
                    guard let folder = folders[wd], length > 0,
                        !isDirectory || mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0
                    else { continue }
                    let name = Array(nameBytes.prefix(while: { $0 != 0 }))
                    if name.isEmpty || Spool.isIncompleteName(name) { continue }
                    found.folders.insert(folder)
                    let key = Array(folder.utf8) + [0x2F] + name
                    // In the order they happened: the last one says how the file arrived.
                    if mask & UInt32(IN_CREATE) != 0 && !isDirectory { found.arrivals[key] = .created }
                    if mask & UInt32(IN_MOVED_TO) != 0 { found.arrivals[key] = .renamed }
                    if isDirectory { continue }
                    if mask & UInt32(IN_CLOSE_WRITE) != 0 { found.arrivals[key] = .closed }
                    if mask & UInt32(IN_OPEN) != 0 { found.opened[key, default: 0] += 1 }
                    if mask & UInt32(IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) != 0 { found.opened[key, default: 0] -= 1 }
                }
            }
            any = any || found.overflow || !found.folders.isEmpty
            hints.withLock { current in
                current.arrivals.merge(found.arrivals) { _, later in later }
                current.folders.formUnion(found.folders)
                current.overflow = current.overflow || found.overflow
                current.opened.merge(found.opened, uniquingKeysWith: +)
            }
        }
    }
}

/// An inotify call failed.
package struct WatcherError: Error, Sendable, CustomStringConvertible {
    package var operation: String
    package var path: String?
    package var code: Int32

    package var description: String {
        "\(operation)\(path.map { " " + $0 } ?? ""): \(String(cString: strerror(code)))"
    }
}
