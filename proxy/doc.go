// Package proxy is mlproxy's front door: a MySQL-protocol server that apps
// connect to instead of their MySQL/MariaDB server. Each client connection
// gets its own backend connection to the region's local server, opened
// when the client connects; the proxy relays the authentication exchange
// (the backend's own scramble: no passwords are stored here) and then
// every command as raw bytes, parsing only packet headers.
//
// Its one addition to the traffic is the stamp (docs/internals.md): before
// a statement that may write a replicated table, the proxy pipelines
//
//	SET @_mlr_hlc=<fresh stamp>,@_mlr_origin=<region id>
//
// as its own COM_QUERY in the same TCP write as the client's command, reads
// and discards the SET's OK, then streams the command's response. The
// server-side triggers put the stamp on the rows. If the SET fails, the
// client's command has still run (it was pipelined): its response is read
// and discarded and the client gets the SET's ERR.
//
// # Invariants
//
//   - Result sets stream packet by packet; they are never decoded or
//     re-encoded, and never held whole. Affected rows, last insert id,
//     warnings and errors are the backend's own bytes. Client commands are
//     read whole (at most 1 GiB, the server's own limit) to classify them.
//   - COM_STMT_EXECUTE and COM_STMT_SEND_LONG_DATA are relayed untouched:
//     the statement id is read, to find the class recorded when the
//     statement was prepared, and, for a statement that writes a table
//     with a home region by key, the parameters that hold keys, with a
//     bounds-checked reader of its own (go-mysql's issue #915 cannot happen
//     here; its LengthEncodedString panics on a short packet).
//   - Each client connection has its own context, cancelled when it closes;
//     cancelling it closes both sockets.
//   - A malformed or hostile client closes only its own connection, after
//     an ERR when one can still be sent.
//
// # Classification
//
// COM_QUERY and COM_STMT_PREPARE texts are classified with the tidb parser;
// results are cached in an LRU keyed by (current database, text), texts
// over 16 KiB are not cached. Kinds: read (SELECT without INTO, SHOW,
// EXPLAIN), session (SET, BEGIN, COMMIT, USE, GRANT, ...), ddl, write (with
// the tables written: INSERT, REPLACE, UPDATE, DELETE incl. multi-table,
// LOAD DATA; stamped when one of them is replicated; the decision is taken
// per use, so the cache survives a change of the replicated set), write of
// unknown tables (CALL, EXECUTE, DO, anything the parser cannot parse such
// as MariaDB's INSERT ... RETURNING: always stamped), and refused.
// A multi-statement COM_QUERY gets one stamp for the whole packet.
// Prepared statements are classified at PREPARE and stamped before each
// EXECUTE. The current database is tracked from the handshake,
// COM_INIT_DB, USE (also inside a multi-statement packet, per result) and
// COM_CHANGE_USER.
//
// Refused, with ERROR 1105 (HY000) "mlproxy: <why and what to do>" and the
// connection kept: writes and DDL on the internal schema `mlr`; setting or
// resetting any @_mlr_* variable (SET, :=, SELECT ... INTO); DROP/CREATE
// TRIGGER of an `_mlr_` trigger; ALTER TABLE on an `_mlr_` column; SET
// sql_log_bin to anything but 1/ON/DEFAULT. Unparseable statements are
// refused only when they match these by pattern.
//
// # Protocol choices
//
// Capabilities relayed: see relayCaps. The compressed protocol (zlib) is
// the proxy's own on the client leg (compress.go); zstd is not offered.
// Masked: CLIENT_DEPRECATE_EOF (result sets keep their EOF packets, which
// is how the proxy finds a response's end), optional result set metadata,
// query attributes and the MariaDB extended capabilities except extended
// type info (no COM_STMT_BULK_EXECUTE, no progress reports, no metadata
// cache). Commands relayed: everything a client library
// sends (QUERY, the STMT_* family incl. cursors and FETCH, INIT_DB, PING,
// FIELD_LIST, RESET_CONNECTION, CHANGE_USER, STATISTICS, SET_OPTION,
// PROCESS_KILL/INFO, REFRESH, DEBUG, QUIT); replication and other commands
// get ERROR 1047.
//
// TLS: with Config.ClientTLS the greeting offers CLIENT_SSL and the proxy
// upgrades on the client's SSLRequest. The backend leg uses TLS when
// Config.BackendTLS is set (always), or, when it is nil, when the client
// leg is TLS and Backend.TLS has insecure_skip_verify (no certificate check:
// meant for a local server); otherwise the backend leg is plain TCP and an
// account with REQUIRE SSL gets the server's own 1045. CLIENT_SSL in the
// relayed handshake response follows the backend leg.
//
// Authentication: handshake response, auth switch requests and auth more
// data are relayed with sequence ids shifted when one leg has an
// SSLRequest and the other not. After auth-more-data the client is
// expected to answer, except caching_sha2_password's fast-auth success
// (0x01 0x03). mysql_native_password and MariaDB's ed25519 are tested
// through this relay; MySQL's caching_sha2_password follows the same
// rules but is untested here (MariaDB has no such plugin).
//
// # Known limits
//
//   - A SELECT or SET calling a stored function that writes is classified
//     read/session and not stamped: those rows get the stamp left in the
//     session by the connection's previous stamped write (or the trigger's
//     bypass stamp).
//   - The stamping SET resets what ROW_COUNT() and FOUND_ROWS() report to a
//     following write in the same session that reads them.
//   - The parser runs with the default SQL mode: under ANSI_QUOTES,
//     "double-quoted" names do not parse and such writes are stamped as
//     unknown writes.
//   - A multi-statement packet holding both USE and CALL updates the
//     tracked database only when every statement succeeded.
package proxy
