import Foundation
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

/// A real PostgreSQL server of the tests' own: Debian's `initdb` and `pg_ctl` in a temporary folder, run
/// as the `postgres` user when the tests run as root (initdb refuses root), listening on a Unix socket
/// in that folder only (no TCP port), password authentication (scram-sha-256) for every role. Started
/// and stopped by each test that needs one (``PostgresServer/with(_:)``).
struct PostgresServer: Sendable {
    let folder: String
    /// The superuser's password (role `postgres`), in `folder/superuser.pw`.
    let superuserPassword: String

    /// The server's programs: the newest of Debian's /usr/lib/postgresql/N/bin.
    static let binaries: String? = {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init)
        guard let newest = versions.max() else { return nil }
        let bin = "\(root)/\(newest)/bin"
        return FileManager.default.isExecutableFile(atPath: bin + "/initdb") ? bin : nil
    }()

    static var runningAsRoot: Bool { geteuid() == 0 }

    /// Runs `script` by /bin/sh, as `postgres` when the tests are root; fails the test with its output
    /// when it fails.
    @discardableResult
    static func shell(_ script: String, asServer: Bool = true) async throws -> String {
        let arguments =
            asServer && runningAsRoot
            ? ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "/bin/sh", "-c", script]
            : ["/bin/sh", "-c", script]
        let result = try await Subprocess.run(
            .path(FilePath(arguments[0])),
            arguments: Arguments(Array(arguments.dropFirst())),
            environment: .inherit,
            output: .string(limit: 1 << 20),
            error: .string(limit: 1 << 20)
        )
        guard result.terminationStatus == .exited(0) else {
            throw PostgresServerError(
                message:
                    "\(script): \(result.terminationStatus)\n\(result.standardOutput ?? "")\(result.standardError ?? "")"
            )
        }
        return result.standardOutput ?? ""
    }

    /// initdb + pg_ctl start in a new temporary folder.
    static func start() async throws -> PostgresServer {
        guard let bin = binaries else {
            throw PostgresServerError(message: "no PostgreSQL server here: apt-get install postgresql (make test does)")
        }
        var template = Array("/tmp/carespool-pg.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw PostgresServerError(message: "mkdtemp failed") }
        let folder = String(cString: made)
        let password = (0..<24).map { _ in "abcdefghjkmnpqrstuvwxyz23456789".randomElement()! }.map(String.init)
            .joined()
        try Data(password.utf8).write(to: URL(fileURLWithPath: folder + "/superuser.pw"))
        if runningAsRoot {
            try await shell("chown -R postgres:postgres '\(folder)' && chmod 0700 '\(folder)'", asServer: false)
        }
        // In postgresql.conf, so that every later start (restart, startAgain) listens the same way.
        let settings = [
            "listen_addresses = ''", "unix_socket_directories = '\(folder)'", "port = 5432",
            // A test server: its own durability is not what the tests prove (the spool's is).
            "fsync = off", "synchronous_commit = off", "full_page_writes = off",
            "max_connections = 100", "shared_buffers = 32MB",
        ].joined(separator: "\n")
        try await shell(
            """
            set -e
            '\(bin)/initdb' -D '\(folder)/data' -U postgres -E UTF8 --no-locale --no-instructions \
              --auth-local=scram-sha-256 --auth-host=reject --pwfile='\(folder)/superuser.pw' >'\(folder)/initdb.log' 2>&1
            printf '%s\\n' "\(settings)" >> '\(folder)/data/postgresql.conf'
            '\(bin)/pg_ctl' -D '\(folder)/data' -l '\(folder)/server.log' -w -t 60 start >/dev/null
            """
        )
        return PostgresServer(folder: folder, superuserPassword: password)
    }

    /// Stops the server (fast shutdown) and removes its folder.
    func stop() async {
        if let bin = Self.binaries {
            _ = try? await Self.shell("'\(bin)/pg_ctl' -D '\(folder)/data' -m fast -w -t 60 stop >/dev/null 2>&1")
        }
        try? FileManager.default.removeItem(atPath: folder)
        let base = (folder as NSString).lastPathComponent + "-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [] where name.hasPrefix(base) {
            try? FileManager.default.removeItem(atPath: "/tmp/" + name)
        }
    }

    /// Stops the server as a crash would (SIGKILL of the postmaster and its children is not what
    /// PostgreSQL survives gracefully; `immediate` is its own crash-like stop), then starts it again.
    func restart(pauseMs: Int = 0) async throws {
        guard let bin = Self.binaries else { return }
        try await Self.shell("'\(bin)/pg_ctl' -D '\(folder)/data' -m immediate -w -t 60 stop >/dev/null")
        if pauseMs > 0 { try await Task.sleep(for: .milliseconds(pauseMs)) }
        try await Self.shell(
            "'\(bin)/pg_ctl' -D '\(folder)/data' -l '\(folder)/server.log' -w -t 60 start >/dev/null"
        )
    }

    /// Stops the server (fast: connections are closed) and leaves its data for ``startAgain()``.
    func pause() async throws {
        guard let bin = Self.binaries else { return }
        try await Self.shell("'\(bin)/pg_ctl' -D '\(folder)/data' -m fast -w -t 60 stop >/dev/null")
    }

    /// Starts a server stopped by ``pause()`` or ``restart(pauseMs:)`` again.
    func startAgain() async throws {
        guard let bin = Self.binaries else { return }
        try await Self.shell("'\(bin)/pg_ctl' -D '\(folder)/data' -l '\(folder)/server.log' -w -t 60 start >/dev/null")
    }

    /// Runs SQL as the superuser through psql; returns its unaligned, tuples-only output.
    @discardableResult
    func psql(_ sql: String, database: String = "postgres") async throws -> String {
        guard let bin = Self.binaries else { throw PostgresServerError(message: "no PostgreSQL") }
        let file = folder + "/query-\(UUID().uuidString).sql"
        try Data(sql.utf8).write(to: URL(fileURLWithPath: file))
        if Self.runningAsRoot { chown(file, Self.postgresUID, Self.postgresGID) }
        defer { unlink(file) }
        return try await Self.shell(
            "PGPASSWORD='\(superuserPassword)' '\(bin)/psql' -X -q -A -t -v ON_ERROR_STOP=1 -h '\(folder)' -p 5432 "
                + "-U postgres -d '\(database)' -f '\(file)'"
        ).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static let postgresUID: uid_t = getpwnam("postgres")?.pointee.pw_uid ?? 0
    static let postgresGID: gid_t = getpwnam("postgres")?.pointee.pw_gid ?? 0

    /// A new role with a random password and a database it owns; returns the password.
    func createDatabase(_ name: String, role: String) async throws -> String {
        let password = (0..<20).map { _ in "abcdefghjkmnpqrstuvwxyz23456789".randomElement()! }.map(String.init)
            .joined()
        try await psql("CREATE ROLE \(role) LOGIN PASSWORD '\(password)';")
        try await psql("CREATE DATABASE \(name) OWNER \(role);")
        return password
    }

    /// The URL carespool is given for `database` as `role`: the socket folder, never a password.
    func url(_ database: String, role: String) -> String {
        "postgres://\(role)@/\(database)?host=\(folder)&port=5432"
    }

    /// `password` in a new 0600 file of the tests' own, for `--db-password-file`.
    func passwordFile(_ password: String) throws -> String {
        let path = folder + "-\(UUID().uuidString).pw"
        try Data((password + "\n").utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o600)
        return path
    }

    /// `body` with a running server, stopped afterwards whatever `body` did.
    static func with<R: Sendable>(_ body: (PostgresServer) async throws -> R) async throws -> R {
        let server = try await start()
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }
}

struct PostgresServerError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
