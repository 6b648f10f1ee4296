import Foundation
import Testing
import Watcher

#if canImport(Glibc)
    import Glibc
#endif

/// Real inotify on a real folder.
@Suite struct WatcherTests {
    /// Waits (at most 5 s) until `condition` holds for the hints gathered so far.
    func gather(_ watcher: Watcher, until condition: (WatchHints) -> Bool) async -> WatchHints {
        var all = WatchHints()
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            let hints = watcher.drain()
            all.complete.formUnion(hints.complete)
            all.folders.formUnion(hints.folders)
            all.overflow = all.overflow || hints.overflow
            if condition(all) { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return all
    }

    @Test func closeAfterWriteAndRenameInMarkAFileComplete() async throws {
        let dir = TempDir("watch")
        defer { dir.cleanup() }
        let watcher = try Watcher(folders: [dir.path])
        defer { watcher.stop() }
        try Data("a".utf8).write(to: URL(fileURLWithPath: dir.file("written.json")))
        try Data("b".utf8).write(to: URL(fileURLWithPath: dir.file(".rsync.tmp123")))
        #expect(rename(dir.file(".rsync.tmp123"), dir.file("renamed.json")) == 0)
        let hints = await gather(watcher) { $0.complete.count >= 2 }
        #expect(hints.complete == [dir.file("written.json"), dir.file("renamed.json")])
        #expect(hints.folders == [dir.path])
    }

    @Test func aHardLinkIsOnlyAHintToLook() async throws {
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
        #expect(hints.complete.isEmpty)
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

    @Test func refusesAFolderThatDoesNotExist() {
        #expect(throws: WatcherError.self) { try Watcher(folders: ["/nonexistent/carespool"]) }
    }
}
