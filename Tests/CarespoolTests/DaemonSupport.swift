import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Runs the real `carespool` binary built next to this test bundle.
enum Daemon {
    /// The `carespool` executable in the same build folder as the running test binary.
    static let binary: String = {
        let exe =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("carespool").path
    }()

    /// The tests' environment: no configuration file unless a test names one with `--config` (a file
    /// installed in /etc/carespool on this machine must not change what the tests see).
    static let environment = Environment.inherit.updating(["CARESPOOL_CONFIG": "/dev/null"])

    /// Starts `carespool serve` on `spool`, runs `body` with its pid while it runs, and returns what
    /// `body` returned, how the daemon ended and everything it wrote to stderr. `body` must end the daemon
    /// (SIGTERM or SIGKILL) before it returns.
    static func serve<R: Sendable>(
        spool: String,
        arguments extra: [String] = [],
        environment variables: [String: String] = [:],
        _ body: @escaping @Sendable (pid_t) async throws -> R
    ) async throws -> (result: R, status: TerminationStatus, log: String) {
        let arguments =
            [
                "serve", "--spool", spool, "--schema", TestPaths.schemaJSON.path, "--settle-ms", "300", "--rescan-ms",
                "1000",
            ] + (extra.contains("--http") ? [] : ["--http", "off"]) + extra
            // A route with no credential is closed: tests that post unsigned on loopback open every route.
            + (extra.contains("--http") && !extra.contains(where: Self.authFlags.contains) ? ["--http-open", "*"] : [])
        var environment = Self.environment
        if !variables.isEmpty {
            environment = environment.updating(
                Dictionary(uniqueKeysWithValues: variables.map { (Environment.Key(rawValue: $0.key)!, $0.value) })
            )
        }
        return try await running(arguments, environment: environment, body)
    }

    /// The flags that give routes credentials (or open them): with none, `serve` opens every route.
    static let authFlags: Set<String> = ["--http-token", "--zoom-secret", "--webhook-secret", "--http-open"]

    /// Starts `carespool serve --config FILE` (nothing else on the command line), like `serve`.
    static func serveWithConfig<R: Sendable>(
        _ config: String,
        _ body: @escaping @Sendable (pid_t) async throws -> R
    ) async throws -> (result: R, status: TerminationStatus, log: String) {
        try await running(["serve", "--config", config], environment: environment, body)
    }

    private static func running<R: Sendable>(
        _ arguments: [String],
        environment: Environment,
        _ body: @escaping @Sendable (pid_t) async throws -> R
    ) async throws -> (result: R, status: TerminationStatus, log: String) {
        let outcome = try await run(
            .path(FilePath(binary)),
            arguments: Arguments(arguments),
            environment: environment,
            input: .none,
            output: .discarded,
            error: .string(limit: 256 << 20)
        ) { execution in
            try await body(execution.processIdentifier.value)
        }
        return (outcome.closureResult, outcome.terminationStatus, outcome.standardError)
    }

    /// Runs a carespool command to its end; returns exit status, stdout and stderr. `executable` is
    /// another copy of the binary (an installed layout), `directory` the working directory (default: the
    /// tests').
    static func command(
        _ arguments: [String],
        executable: String = Daemon.binary,
        in directory: String? = nil
    ) async throws -> (status: TerminationStatus, out: String, err: String) {
        let result = try await run(
            .path(FilePath(executable)),
            arguments: Arguments(arguments),
            environment: environment,
            workingDirectory: directory.map { FilePath($0) },
            output: .string(limit: 16 << 20),
            error: .string(limit: 16 << 20)
        )
        return (result.terminationStatus, result.standardOutput, result.standardError)
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration = .seconds(20), _ condition: () throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}

/// Sends `signal` to `pid` as soon as `condition` holds, polled every 2 ms on a thread of its own, and
/// returns when it sent it (nil: the condition did not hold within `timeout`; the signal is sent then
/// all the same, so that the daemon ends). A test task polling on the cooperative pool — two threads
/// here, shared by every test running at once — can be held back for seconds, long enough for the file
/// a kill was meant to interrupt to finish first.
func signal(
    _ pid: pid_t,
    _ number: Int32,
    when condition: @escaping @Sendable () -> Bool,
    timeout: Duration = .seconds(60)
) async -> ContinuousClock.Instant? {
    await offThePool {
        let held = pollUntil(timeout, condition)
        kill(pid, number)
        return held ? ContinuousClock.now : nil
    }
}

/// Polls `condition` every 2 ms on the calling thread (one of its own: see ``offThePool(_:)``) until it
/// holds or `timeout` passes; returns whether it held.
func pollUntil(_ timeout: Duration, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return condition() }
        usleep(2_000)
    }
    return true
}

/// Counts rows of the spool's database with `sql` on the calling thread (0 while the database is not
/// there yet): the condition of ``signal(_:_:when:timeout:)``, used from its one thread only.
final class RowCount: @unchecked Sendable {
    private let path: String
    private let sql: String
    private var queue: DatabaseQueue?

    init(spool: String, _ sql: String) {
        path = spool + "/carespool.sqlite3"
        self.sql = sql
    }

    func callAsFunction() -> Int {
        if queue == nil { queue = try? SpoolView(root: "").database(path) }
        return ((try? queue?.read { db in try Int.fetchOne(db, sql: sql) }) ?? 0) ?? 0
    }
}

/// A spool folder's files, seen from outside as an operator sees them.
struct SpoolView {
    let root: String

    func names(_ relative: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root + "/" + relative)) ?? []).sorted()
    }

    /// Files under done/<kind>/<day>/.
    func done(_ kind: String = "appointments") -> [String] {
        names("done/" + kind).flatMap { day in names("done/\(kind)/\(day)") }.sorted()
    }

    /// Payload files in failed/<kind>/ (sidecars excluded).
    func failed(_ kind: String = "appointments") -> [String] {
        names("failed/" + kind).filter {
            !$0.hasPrefix(".") && !$0.hasSuffix(".error.json") && !$0.contains(".rejected.")
        }
    }

    func sidecars(_ kind: String = "appointments") -> [String] {
        names("failed/" + kind).filter { $0.hasSuffix(".error.json") || $0.contains(".rejected.") }
    }

    func inbox(_ kind: String = "appointments") -> [String] { names("inbox/" + kind) }
    func processing(_ kind: String = "appointments") -> [String] { names("processing/" + kind) }

    /// The original name of a spooled file (`<id>--<name>`).
    static func original(_ spoolName: String) -> String {
        guard let range = spoolName.range(of: "--") else { return spoolName }
        return String(spoolName[range.upperBound...])
    }

    /// The daemon's database, read-only: `<spool>/carespool.sqlite3` unless `path` says where.
    func database(_ path: String? = nil) throws -> DatabaseQueue {
        var config = Configuration()
        config.readonly = true
        return try DatabaseQueue(path: path ?? root + "/carespool.sqlite3", configuration: config)
    }
}

/// Drops `text` into `folder` as rsync does: a dot-temp name in the same folder, then rename.
func dropLikeRsync(_ text: String, into folder: String, name: String) throws {
    try dropBytes(Array(text.utf8), into: folder, name: name)
}

/// Waits until a starting daemon has laid out its spool (and so watches its inboxes).
func waitUntilServing(_ spool: String) async throws {
    let ready = await eventually { FileManager.default.fileExists(atPath: spool + "/processing/retrying.json") }
    if !ready { throw DaemonNotReady(spool: spool) }
}

struct DaemonNotReady: Error {
    let spool: String
}

/// Runs the daemon on a fresh spool under `dir` each attempt (at most four), `drop` putting the file into
/// its inbox, and kills it with SIGKILL from a thread of its own as soon as `sql` counts `threshold` rows
/// (chunks commit every 100 ms) — until a kill lands with the file still in `processing/<kind>`. Returns
/// that spool; a fast daemon may finish the file before the kill, hence the attempts.
func killMidFile(
    in dir: TempDir,
    kind: String,
    count sql: String,
    atLeast threshold: Int,
    arguments: [String] = ["--chunk-commit-ms", "100"],
    drop: @escaping @Sendable (_ spool: String) throws -> Void
) async throws -> String {
    for attempt in 0..<4 {
        let spool = dir.path + "/spool\(attempt)"
        let run = try await Daemon.serve(spool: spool, arguments: arguments) { pid in
            try await waitUntilServing(spool)
            try drop(spool)
            let rows = RowCount(spool: spool, sql)
            return await signal(pid, SIGKILL, when: { rows() >= threshold })
        }
        #expect(run.status == .signaled(SIGKILL))
        #expect(run.result != nil, "\(threshold) rows were not committed within a minute")
        // One file (a dotfile beside it is its note: its long name, its inbox's settings).
        if SpoolView(root: spool).processing(kind).filter({ !$0.hasPrefix(".") }).count == 1 { return spool }
    }
    throw KillNeverLanded()
}

struct KillNeverLanded: Error {}

/// Starts the daemon again on `spool` (after a kill) and waits until `kind` has `files` files in done/;
/// whether they got there within `timeout`.
func finishAfterRestart(
    _ spool: String,
    kind: String,
    files: Int = 1,
    arguments: [String] = [],
    timeout: Duration = .seconds(180)
) async throws -> Bool {
    let view = SpoolView(root: spool)
    let final = try await Daemon.serve(spool: spool, arguments: arguments) { pid in
        let finished = await eventually(timeout: timeout) { view.done(kind).count == files }
        kill(pid, SIGTERM)
        return finished
    }
    return final.result
}
