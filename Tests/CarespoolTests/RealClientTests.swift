import Foundation
import GRDB
import Subprocess
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// The clients partners really run, against the real daemon: rsync (in place and not, throttled) and
/// OpenSSH's sftp against a local sshd on a loopback port, killed mid-put (issue 21, points 1 and 2).
/// `make test` installs both (rsync, openssh-client, openssh-server).
@Suite(.serialized) struct RealClientTests {
    /// An intake CSV of `count` rows of exactly 75 bytes each, as long as its header line: every line end
    /// is at a multiple of 75, and so never at a multiple of sftp's 32,768-byte writes below 2.4 MB — a
    /// put killed part way always cuts a row.
    static func fixedRows(_ count: Int, start: Int) -> String {
        var out = intakeHeader + "\n"
        precondition(out.utf8.count == 75)
        for n in start..<(start + count) {
            // 30% of the rows repeat an MRN (with the same person); names with accents.
            let mrn = n % 10 < 3 && n >= start + 10 ? n - 7 : n
            var line = "M\(String(format: "%07d", mrn)),Zoë,Müller,1980-01-02,V\(String(format: "%09d", n)),2025-03-01,"
            line += String(repeating: "x", count: 74 - line.utf8.count) + "\n"
            out += line
        }
        return out
    }

    /// An intake `[[inbox]]` table at `path` that takes renamed files only.
    static func renameOnlyInbox(_ path: String) -> String {
        "[[inbox]]\npath = \"\(path)\"\nkind = \"intake\"\narrival = \"rename\"\n\n"
    }

    /// Runs `command` with `arguments`; its status and what it wrote to stderr.
    static func client(_ command: String, _ arguments: [String]) async throws -> (
        status: TerminationStatus, err: String
    ) {
        let result = try await run(
            command.hasPrefix("/") ? .path(FilePath(command)) : .name(command),
            arguments: Arguments(arguments),
            output: .discarded,
            error: .string(limit: 1 << 20)
        )
        return (result.terminationStatus, result.standardError)
    }

    /// The ledger's (original name, outcome) of every intake file, and the visits stored.
    static func ledger(_ view: SpoolView) async throws -> (files: [String: [String]], visits: Int) {
        let database = try view.database()
        return try await database.read { db in
            var files: [String: [String]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT original_name, outcome FROM files WHERE kind = 'intake'") {
                files[row["original_name"] as String, default: []].append(row["outcome"] as String)
            }
            return (files, try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")!)
        }
    }

    /// rsync stats and sets the times and mode of a file it wrote in place after closing it; a file
    /// claimed in that moment made it end with status 23. With the close grace (its default, 1 s) every
    /// run exits 0, in place or not, with -a or not, throttled, and every file is stored once.
    @Test func rsyncInPlaceOrNotExitsZeroAndEveryFileIsStoredOnce() async throws {
        let dir = TempDir("rsync")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let runs: [(flags: [String], files: Int)] = [
            (["-a", "--inplace", "--bwlimit=400"], 3),
            (["-r", "--inplace", "--bwlimit=400"], 2),
            (["-a", "--bwlimit=400"], 2),
            (["-a", "--inplace"], 3),
        ]
        var names: [String] = []
        for (index, run) in runs.enumerated() {
            let source = dir.file("source\(index)")
            try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
            for file in 0..<run.files {
                let name = "visits-\(index)-\(file).csv"
                try Self.fixedRows(1_500, start: (index * 10 + file) * 10_000)
                    .write(toFile: source + "/" + name, atomically: true, encoding: .utf8)
                names.append(name)
            }
        }
        let expected = names
        let result = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            var statuses: [(String, TerminationStatus, String)] = []
            for (index, run) in runs.enumerated() {
                let source = dir.file("source\(index)")
                let rsync = try await Self.client("rsync", run.flags + [source + "/", spool + "/inbox/intake/"])
                statuses.append((run.flags.joined(separator: " "), rsync.status, rsync.err))
            }
            let finished = await eventually(timeout: .seconds(60)) { view.done("intake").count == expected.count }
            kill(pid, SIGTERM)
            return (statuses, finished)
        }
        for (flags, status, err) in result.result.0 {
            #expect(status.isSuccess, "rsync \(flags): \(status) \(err)")
        }
        #expect(result.result.0.count == runs.count)
        #expect(result.result.1, "every file done")
        let (files, visits) = try await Self.ledger(view)
        #expect(files.count == names.count)
        for name in names {
            #expect(files[name] == ["accepted"], "\(name): \(files[name] ?? [])")
        }
        #expect(visits == names.count * 1_500)
        #expect(view.failed("intake").isEmpty && view.inbox("intake").isEmpty)
    }

    /// What rsync does after closing a file written in place, made slow: the writer sets the file's times
    /// and mode by name 400 ms after its close, as any client may. Within the close grace the file is still
    /// there, every time; then it is claimed and stored once. The writer is a process of its own (`sh`,
    /// `cat`, `touch`, `chmod`): a sleep in this test's task could be stretched past the grace by other
    /// tests holding the cooperative threads (it was, once, in CI), a process's is not.
    @Test func aWriterThatSetsTimesAndModeAfterItsCloseStillFindsItsFile() async throws {
        let dir = TempDir("closegrace")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        for n in 0..<5 {
            try Self.fixedRows(20, start: n * 1_000).write(
                toFile: dir.file("source\(n)"),
                atomically: true,
                encoding: .utf8
            )
        }
        // Each file written in place (the shell opens it, `cat` writes, the shell closes it), then its
        // times and mode set by name 400 ms later, as rsync's set_file_attrs does (utimensat, chmod).
        let script = """
            cd "$1" || exit 2
            for n in 0 1 2 3 4; do
                cat "$2/source$n" > "late-$n.csv" || exit 2
                sleep 0.4
                touch -m -d @1700000000 "late-$n.csv" && chmod 640 "late-$n.csv" || echo "late-$n.csv gone" >&2
            done
            """
        let result = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            let writer = try await Self.client("/bin/sh", ["-c", script, "sh", spool + "/inbox/intake", dir.path])
            let done = await eventually(timeout: .seconds(30)) { view.done("intake").count == 5 }
            kill(pid, SIGTERM)
            return (writer, done)
        }
        let (writer, done) = result.result
        #expect(writer.status.isSuccess && writer.err.isEmpty, "the file was still under its name: \(writer.err)")
        #expect(done)
        let (files, visits) = try await Self.ledger(view)
        #expect(files.count == 5 && files.values.allSatisfy { $0 == ["accepted"] })
        #expect(visits == 100)
    }

    /// Found by the hostile review: after a restart, files renamed into a rename-only inbox while the
    /// daemon was down waited for ever. Files written in place are remembered instead: after the restart
    /// the one left before stays left, and the ones renamed in meanwhile — one with an mtime in the future,
    /// as `rsync -a` keeps a sender's clock — are claimed.
    @Test func aRestartKeepsLeavingTheFilesWrittenInPlaceAndTakesTheRenamedOnes() async throws {
        let dir = TempDir("rename-restart")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let partner = dir.path + "/partner"
        let view = SpoolView(root: spool)
        let config = dir.file("carespool.toml")
        try Self.renameOnlyInbox(partner).write(toFile: config, atomically: true, encoding: .utf8)
        let first = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            try Self.fixedRows(10, start: 0).write(toFile: partner + "/half.csv", atomically: false, encoding: .utf8)
            let remembered = await eventually(timeout: .seconds(20)) {
                (try? String(contentsOfFile: spool + "/processing/written-in-place", encoding: .utf8))?.isEmpty == false
            }
            kill(pid, SIGTERM)
            return remembered
        }
        #expect(first.result, "the file written in place is remembered")
        // While the daemon is down: two files renamed in, one with an mtime an hour ahead.
        try dropLikeRsync(Self.fixedRows(10, start: 100), into: partner, name: "renamed.csv")
        try Self.fixedRows(10, start: 200).write(toFile: partner + "/.ahead.tmp", atomically: false, encoding: .utf8)
        try FileManager.default.setAttributes(
            [.modificationDate: Date().addingTimeInterval(3_600)],
            ofItemAtPath: partner + "/.ahead.tmp"
        )
        #expect(rename(partner + "/.ahead.tmp", partner + "/ahead.csv") == 0)
        let second = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            let taken = await eventually(timeout: .seconds(30)) { view.done("intake").count == 2 }
            try await Task.sleep(for: .seconds(3))  // past settle and grace: the left file stays left
            let left = view.names("../partner")
            kill(pid, SIGTERM)
            return (taken, left)
        }
        #expect(second.result.0, "both renamed files claimed after the restart")
        #expect(second.result.1 == ["half.csv"])
        let (files, visits) = try await Self.ledger(view)
        #expect(files == ["renamed.csv": ["accepted"], "ahead.csv": ["accepted"]] && visits == 20)
    }

    /// Found by the second hostile review: killed (-9) during a large import, the daemon had not saved
    /// which files it was leaving in place (saved only between steps), and the record was keyed by the
    /// inbox's position in the configuration; a restart in the middle of a large file sent READY=1 only
    /// once the file was done (a 10M-row file took five minutes, past systemd's start timeout).
    @Test func aKillDuringALargeImportThenARestartWithTheInboxesReordered() async throws {
        let dir = TempDir("rename-kill")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let partner = dir.path + "/partner"
        let view = SpoolView(root: spool)
        let before = dir.file("before.toml")
        let after = dir.file("after.toml")
        try Self.renameOnlyInbox(partner).write(toFile: before, atomically: true, encoding: .utf8)
        try (Self.renameOnlyInbox(dir.path + "/other") + Self.renameOnlyInbox(partner))
            .write(toFile: after, atomically: true, encoding: .utf8)
        let big = await offThePool { intakeCSV(count: 150_000) }
        // Nothing committed before the kill (`--chunk-commit-ms 60000`): the restart reads the whole file
        // again. The steps up to the kill run on a thread of their own, which a busy test pool cannot hold
        // back while the import goes on.
        let first = try await Daemon.serve(
            spool: spool,
            arguments: ["--config", before, "--chunk-commit-ms", "60000"]
        ) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(big, into: spool + "/inbox/intake", name: "big.csv")
            let half = Self.fixedRows(10, start: 0)
            return await offThePool {
                _ = pollUntil(.seconds(30)) { view.processing("intake").count == 1 }
                try? half.write(toFile: partner + "/half.csv", atomically: false, encoding: .utf8)
                let saved = pollUntil(.seconds(30)) {
                    (try? String(contentsOfFile: spool + "/processing/written-in-place", encoding: .utf8))?.isEmpty
                        == false
                }
                kill(pid, SIGKILL)
                return saved
            }
        }
        #expect(first.result, "saved while the large file was in hand")
        #expect(
            view.processing("intake").count == 1 && view.done("intake").isEmpty,
            "the kill landed in the middle of the large file"
        )
        let notify = NotifySocket(path: dir.path + "/notify.sock")
        defer { notify.close() }
        let second = try await Daemon.serve(
            spool: spool,
            arguments: ["--config", after],
            environment: ["NOTIFY_SOCKET": notify.path]
        ) { pid in
            let ready = await eventually(timeout: .seconds(30)) { notify.messages.contains { $0.hasPrefix("READY=1") } }
            let finished = await eventually(timeout: .seconds(120)) { view.done("intake").count == 1 }
            try await Task.sleep(for: .seconds(3))  // past settle and grace
            let left = view.names("../partner")
            kill(pid, SIGTERM)
            return (ready, finished, left)
        }
        let (ready, finished, left) = second.result
        #expect(ready)
        // The daemon's own order of events, not what this test saw when: ready, then the file done.
        let readyAt = second.log.range(of: "carespool ready")?.lowerBound
        let finishedAt = second.log.range(of: "file finished")?.lowerBound
        #expect(
            readyAt != nil && finishedAt != nil && readyAt! < finishedAt!,
            "READY=1 while the resumed large file was still in hand"
        )
        #expect(finished)
        #expect(left == ["half.csv"], "still its writer's after the kill and with the inboxes reordered")
        let (files, visits) = try await Self.ledger(view)
        #expect(files == ["big.csv": ["accepted"]] && visits == 150_000)
    }

    // MARK: sftp against a local sshd

    /// An sshd of the test's own on a free loopback port, root logging in with a key made for it, the
    /// sftp subsystem in process. Stopped by ``stop()``.
    struct LocalSSHD {
        let dir: String
        let port: Int
        var key: String { dir + "/client_key" }

        static func start(in dir: String) async throws -> LocalSSHD {
            for key in ["host_key", "client_key"] {
                let made = try await RealClientTests.client(
                    "ssh-keygen",
                    ["-q", "-t", "ed25519", "-N", "", "-f", dir + "/" + key]
                )
                #expect(made.status.isSuccess, "ssh-keygen: \(made.err)")
            }
            try FileManager.default.copyItem(atPath: dir + "/client_key.pub", toPath: dir + "/authorized_keys")
            let port = freePort()
            let config = """
                Port \(port)
                ListenAddress 127.0.0.1
                HostKey \(dir)/host_key
                PidFile \(dir)/sshd.pid
                AuthorizedKeysFile \(dir)/authorized_keys
                StrictModes no
                UsePAM no
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PermitRootLogin prohibit-password
                Subsystem sftp internal-sftp
                LogLevel ERROR

                """
            try config.write(toFile: dir + "/sshd_config", atomically: true, encoding: .utf8)
            mkdir("/run/sshd", 0o755)  // its privilege separation folder
            let started = try await RealClientTests.client("/usr/sbin/sshd", ["-f", dir + "/sshd_config"])
            #expect(started.status.isSuccess, "sshd: \(started.err)")
            let listening = await eventually(timeout: .seconds(30)) {
                FileManager.default.fileExists(atPath: dir + "/sshd.pid")
            }
            #expect(listening, "sshd wrote its pid file")
            return LocalSSHD(dir: dir, port: port)
        }

        func stop() {
            guard let text = try? String(contentsOfFile: dir + "/sshd.pid", encoding: .utf8),
                let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
            else { return }
            kill(pid, SIGTERM)
        }

        /// sftp's arguments for a batch file, at most `kbits` Kbit/s when given.
        func sftp(batch: String, kbits: Int? = nil) -> [String] {
            [
                "-b", batch, "-P", "\(port)", "-i", key, "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            ] + (kbits.map { ["-l", "\($0)"] } ?? []) + ["root@127.0.0.1"]
        }
    }

    /// The size of the put's file when last looked at.
    final class Seen: Sendable {
        let size = Mutex(0)
    }

    /// Runs `sftp` with `arguments` and kills it (SIGKILL) once `path` holds at least `bytes`: a partner's
    /// upload interrupted part way. Returns how many bytes were there when it was killed.
    static func killedPut(_ arguments: [String], path: String, bytes: Int) async throws -> Int {
        let outcome = try await run(
            .name("sftp"),
            arguments: Arguments(arguments),
            input: .none,
            output: .discarded,
            error: .discarded
        ) { execution in
            let pid = execution.processIdentifier.value
            // Watched from a thread of its own, which a busy test pool cannot hold back until the put ends.
            let seen = Seen()
            _ = await signal(
                pid,
                SIGKILL,
                when: {
                    let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                    seen.size.withLock { $0 = size }
                    return size >= bytes
                },
                timeout: .seconds(30)
            )
            return seen.size.withLock { $0 }
        }
        return outcome.closureResult
    }

    /// Killing sftp mid-put makes sshd close the half file under its final name. In an ordinary inbox it is
    /// claimed and rejected whole as a truncated upload (nothing stored), and the re-send is stored. In an
    /// inbox with `arrival = "rename"` the half file is never claimed (it is its writer's); the re-send,
    /// uploaded to a temporary name and renamed, is; a file put in place under its final name is not.
    @Test func anSFTPPutKilledPartWayIsNeverStoredAndItsResendIs() async throws {
        let dir = TempDir("sftp")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let partner = dir.path + "/partner"
        let view = SpoolView(root: spool)
        try FileManager.default.createDirectory(atPath: dir.file("ssh"), withIntermediateDirectories: true)
        let sshd = try await LocalSSHD.start(in: dir.file("ssh"))
        defer { sshd.stop() }
        let config = dir.file("carespool.toml")
        try Self.renameOnlyInbox(partner).write(toFile: config, atomically: true, encoding: .utf8)
        // 20,000 rows of 75 bytes: 1.5 MB, 15 s at 800 Kbit/s; killed after 200 KB.
        let ordinary = Self.fixedRows(20_000, start: 0)
        let renamed = Self.fixedRows(20_000, start: 100_000)
        try ordinary.write(toFile: dir.file("ordinary.csv"), atomically: true, encoding: .utf8)
        try renamed.write(toFile: dir.file("renamed.csv"), atomically: true, encoding: .utf8)
        try Self.fixedRows(10, start: 900_000).write(toFile: dir.file("direct.csv"), atomically: true, encoding: .utf8)
        @Sendable func batch(_ name: String, _ lines: [String]) throws -> String {
            try (lines.joined(separator: "\n") + "\n").write(toFile: dir.file(name), atomically: true, encoding: .utf8)
            return dir.file(name)
        }
        let inbox = spool + "/inbox/intake"
        let result = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            var log: [String] = []
            var clients: [(String, TerminationStatus, String)] = []
            // 1. An ordinary inbox: the put, killed; then the re-send.
            let cut = try await Self.killedPut(
                sshd.sftp(
                    batch: try batch("put1", ["put \(dir.file("ordinary.csv")) \(inbox)/visits.csv"]),
                    kbits: 800
                ),
                path: inbox + "/visits.csv",
                bytes: 200_000
            )
            log.append("killed at \(cut) bytes")
            let rejected = await eventually(timeout: .seconds(30)) { view.failed("intake").count == 1 }
            let resend = try await Self.client(
                "sftp",
                sshd.sftp(batch: try batch("put2", ["put \(dir.file("ordinary.csv")) \(inbox)/visits.csv"]))
            )
            clients.append(("re-send", resend.status, resend.err))
            let stored = await eventually(timeout: .seconds(60)) { view.done("intake").count == 1 }
            // 2. A rename-only inbox: the put to a temporary name, killed; a put in place; then the re-send.
            let partnerCut = try await Self.killedPut(
                sshd.sftp(
                    batch: try batch("put3", ["put \(dir.file("renamed.csv")) \(partner)/visits.csv.uploading"]),
                    kbits: 800
                ),
                path: partner + "/visits.csv.uploading",
                bytes: 200_000
            )
            log.append("partner killed at \(partnerCut) bytes")
            let direct = try await Self.client(
                "sftp",
                sshd.sftp(batch: try batch("put4", ["put \(dir.file("direct.csv")) \(partner)/direct.csv"]))
            )
            clients.append(("direct", direct.status, direct.err))
            // Longer than settle, close grace and several rescans: still there, unclaimed.
            try await Task.sleep(for: .seconds(4))
            let leftAlone = view.names("../partner")
            let partnerResend = try await Self.client(
                "sftp",
                sshd.sftp(
                    batch: try batch(
                        "put5",
                        [
                            "put \(dir.file("renamed.csv")) \(partner)/visits.csv.uploading",
                            "rename \(partner)/visits.csv.uploading \(partner)/visits.csv",
                        ]
                    )
                )
            )
            clients.append(("partner re-send", partnerResend.status, partnerResend.err))
            let partnerStored = await eventually(timeout: .seconds(60)) { view.done("intake").count == 2 }
            let after = view.names("../partner")
            kill(pid, SIGTERM)
            return (log, clients, rejected, stored, leftAlone, partnerStored, after)
        }
        let (log, clients, rejected, stored, leftAlone, partnerStored, after) = result.result
        #expect(rejected && stored && partnerStored, "\(log)")
        #expect(clients.count == 3)
        for (label, status, err) in clients {
            #expect(status.isSuccess, "sftp \(label): \(status) \(err)")
        }
        // The killed uploads were part way: more than the threshold, less than the file.
        for line in log where line.contains("killed at") {
            let bytes = Int(line.split(separator: " ").dropLast().last!)!
            #expect(bytes >= 200_000 && bytes < ordinary.utf8.count, "\(line)")
        }
        #expect(leftAlone == ["direct.csv", "visits.csv.uploading"], "the writer's files are left alone")
        #expect(after == ["direct.csv"], "the re-send overwrote the half file and was renamed in and claimed")
        #expect(
            result.log.contains(
                "files written in place in an inbox that takes renamed files only: left for their writers"
            )
        )
        let database = try view.database()
        let rows = try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT outcome, report FROM files WHERE kind = 'intake' ORDER BY received_at")
        }
        #expect(rows.map { $0["outcome"] as String } == ["rejected", "accepted", "accepted"])
        let report = rows.first.map { $0["report"] as String } ?? ""
        #expect(report.contains("truncated upload: last line incomplete (line "), "\(report)")
        let visits = try await database.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")! }
        #expect(visits == 40_000, "both whole files once, nothing of the cut ones")
    }
}
