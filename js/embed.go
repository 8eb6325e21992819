// Package js holds the JavaScript client (realtime.js, an ES module with
// its package.json beside it) for Go programs that serve it, as the demo
// does; it has no Go API of its own.
package js

import _ "embed"

// Module is realtime.js, the browser and Node client, served by the demo
// at /realtime.js.
//
//go:embed realtime.js
var Module []byte
