import Foundation
import Spool
import Synchronization
import Testing
import Watcher

#if canImport(Glibc)
    import Glibc
#endif

/// Real inotify on a real folder.
@Suite struct WatcherTests {
    /// Waits (at most 20 s: the whole suite runs beside it) until `condition` holds for the hints gathered
    /// so far.
    func gather(_ watcher: Watcher, until condition: (WatchHints) -> Bool) async -> WatchHints {
        var all = WatchHints()
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let hints = watcher.drain()
            all.arrivals.merge(hints.arrivals) { _, later in later }
            all.folders.formUnion(hints.folders)
            all.overflow = all.overflow || hints.overflow
            all.opened.merge(hints.opened, uniquingKeysWith: +)
            if condition(all) { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return all
    }

    @Test func aWriteCloseAndARenameInAreToldApart() async throws {
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        let watcher = try Watcher(folders: [dir.path])
        defer { watcher.stop() }
        try Data("a".utf8).write(to: URL(fileURLWithPath: dir.file("written.json")))
        try Data("b".utf8).write(to: URL(fileURLWithPath: dir.file(".rsync.tmp123")))
        #expect(rename(dir.file(".rsync.tmp123"), dir.file("renamed.json")) == 0)
        let hints = await gather(watcher) { $0.arrivals.count >= 2 }
        // Created, then written and closed under its name: written in place. The temporary name is an
        // incomplete one, never reported.
        #expect(
            hints.arrivals == [
                Array(dir.file("written.json").utf8): .closed, Array(dir.file("renamed.json").utf8): .renamed,
            ]
        )
        #expect(hints.folders == [dir.path])
    }

    @Test func aHardLinkIsACreateWithNoWriteClose() async throws {
        // OpenSSH's sftp-server finishes a client's rename with link() + unlink(): IN_CREATE, no move.
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        let outside = TempDir("outside")
        defer { outside.cleanup() }
        try Data("a".utf8).write(to: URL(fileURLWithPath: dir.file("upload.filepart")))
        let watcher = try Watcher(folders: [dir.path])
        defer { watcher.stop() }
        #expect(link(dir.file("upload.filepart"), dir.file("upload.json")) == 0)
        #expect(unlink(dir.file("upload.filepart")) == 0)
        let hints = await gather(watcher) { !$0.folders.isEmpty }
        #expect(hints.folders == [dir.path])
        #expect(hints.arrivals == [Array(dir.file("upload.json").utf8): .created] && hints.opened.isEmpty)
    }

    /// The last event decides: renamed in, then opened and rewritten in place, a file was written in place.
    @Test func aRenameThenARewriteInPlaceIsAWriteInPlace() async throws {
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        let watcher = try Watcher(folders: [dir.path])
        defer { watcher.stop() }
        try Data("a,b\n".utf8).write(to: URL(fileURLWithPath: dir.file(".q.tmp")))
        #expect(rename(dir.file(".q.tmp"), dir.file("q.csv")) == 0)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.file("q.csv")))
        try handle.write(contentsOf: Data("half".utf8))
        try handle.close()
        let key = Array(dir.file("q.csv").utf8)
        let hints = await gather(watcher) { $0.arrivals[key] == .closed }
        #expect(hints.arrivals == [key: .closed])
    }

    @Test func wakesWithoutEventsEveryTickAndEndsOnStop() async throws {
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        let watcher = try Watcher(folders: [dir.path], tick: .milliseconds(20))
        var wakeups = 0
        for await _ in watcher.wakeups {
            wakeups += 1
            if wakeups == 3 { watcher.stop() }
        }
        #expect(wakeups >= 3)
    }

    @Test func opensAndClosesAreCountedSoAFileHeldOpenIsKnown() async throws {
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        let watcher = try Watcher(folders: [dir.path])
        defer { watcher.stop() }
        let path = dir.file("upload.csv")
        let key = Array(path.utf8)
        let writer = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(writer >= 0)
        #expect(write(writer, "mrn\n", 4) == 4)
        let whileOpen = await gather(watcher) { $0.opened[key] == 1 }
        #expect(whileOpen.opened == [key: 1])
        #expect(whileOpen.arrivals == [key: .created])
        // A reader counts too: inotify does not say whether an open was for writing.
        let reader = open(path, O_RDONLY)
        #expect(reader >= 0)
        let withReader = await gather(watcher) { $0.opened[key] == 1 }
        #expect(withReader.opened == [key: 1])
        close(reader)
        close(writer)
        let closed = await gather(watcher) { $0.opened[key] == -2 }
        #expect(closed.opened == [key: -2])
        #expect(closed.arrivals == [key: .closed])
    }

    @Test func theFoldersOwnOpensWakeNoOne() async throws {
        // The processor's scans open the watched folder: were that a wake-up, every scan would cause the next.
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        // A tick no busy machine reaches while the scans run: any wakeup counted is an event's.
        let watcher = try Watcher(folders: [dir.path], tick: .seconds(3_600))
        let wakeups = Atomic<Int>(0)
        let counter = Task {
            for await _ in watcher.wakeups { wakeups.add(1, ordering: .relaxed) }
        }
        for _ in 0..<50 {
            let folder = try #require(opendir(dir.path))
            while readdir(folder) != nil {}
            closedir(folder)
            try await Task.sleep(for: .milliseconds(10))
        }
        try await Task.sleep(for: .milliseconds(300))
        let afterScans = wakeups.load(ordering: .relaxed)
        #expect(watcher.drain().folders.isEmpty)
        try Data("a".utf8).write(to: URL(fileURLWithPath: dir.file("new.json")))
        let deadline = ContinuousClock.now + .seconds(20)
        while wakeups.load(ordering: .relaxed) == afterScans && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(afterScans == 0)
        #expect(wakeups.load(ordering: .relaxed) > afterScans, "a file written in the folder wakes the processor")
        watcher.stop()
        await counter.value
    }

    @Test func refusesAFolderThatDoesNotExist() {
        #expect(throws: WatcherError.self) { try Watcher(folders: ["/nonexistent/carespool"]) }
    }
}
