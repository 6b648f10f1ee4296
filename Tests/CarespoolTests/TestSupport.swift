import Foundation

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
