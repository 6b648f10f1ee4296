import Foundation
import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Paths and helpers shared by the tests.
enum TestPaths {
    /// The repository root (this file is Tests/CarespoolTests/TestSupport.swift).
    static let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    /// ../shared/testdata beside the repository: outside corpora, used whole.
    static let testdata: URL = repoRoot.deletingLastPathComponent().appendingPathComponent("shared/testdata")
    static let schemaJSON: URL = repoRoot.appendingPathComponent("schema.json")
}

/// A fresh temporary directory, removed by `cleanup()`.
struct TempDir {
    let path: String

    init(_ label: String = "t") {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent(
            "carespool-\(label)-\(UUID().uuidString.prefix(8))"
        )
        try! FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        path = base.path
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }

    func file(_ relative: String) -> String { path + "/" + relative }
}

/// The official Standard Webhooks library — Python's `standardwebhooks`, which `make test` installs into
/// `.build/test-python` (a virtual environment) — signing as a real sender does.
enum OfficialStandardWebhooks {
    static let python = TestPaths.repoRoot.appendingPathComponent(".build/test-python/bin/python3").path

    /// The `webhook-signature` the library gives `body` sent as `id` at `timestamp` with `secret`.
    static func sign(id: String, timestamp: Int, body: String, secret: String) async throws -> String {
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw Missing(what: python + " (run `make test-python`, which `make test` runs)")
        }
        let script = """
            import sys, datetime
            from standardwebhooks.webhooks import Webhook
            when = datetime.datetime.fromtimestamp(int(sys.argv[3]), tz=datetime.timezone.utc)
            print(Webhook(sys.argv[1]).sign(sys.argv[2], when, sys.stdin.buffer.read()))
            """
        let result = try await run(
            .path(FilePath(python)),
            arguments: ["-c", script, secret, id, String(timestamp)],
            input: .string(body),
            output: .string(limit: 1 << 16),
            error: .string(limit: 1 << 16)
        )
        guard result.terminationStatus.isSuccess else {
            throw Missing(what: "a signature from standardwebhooks: \(result.standardError)")
        }
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether the library accepts `body` with these `webhook-*` headers under `secret` (its own check,
    /// timestamp tolerance included).
    static func verify(body: [UInt8], headers: [String: String], secret: String) async throws -> Bool {
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw Missing(what: python + " (run `make test-python`, which `make test` runs)")
        }
        let script = """
            import sys
            from standardwebhooks.webhooks import Webhook
            headers = {"webhook-id": sys.argv[2], "webhook-timestamp": sys.argv[3], "webhook-signature": sys.argv[4]}
            Webhook(sys.argv[1]).verify(sys.stdin.buffer.read(), headers)
            """
        let result = try await run(
            .path(FilePath(python)),
            arguments: [
                "-c", script, secret, headers["webhook-id"] ?? "", headers["webhook-timestamp"] ?? "",
                headers["webhook-signature"] ?? "",
            ],
            input: .array(body),
            output: .discarded,
            error: .discarded
        )
        return result.terminationStatus.isSuccess
    }

    struct Missing: Error, CustomStringConvertible {
        let what: String
        var description: String { "missing " + what }
    }
}
