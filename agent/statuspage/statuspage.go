// Package statuspage holds the files of the status page every agent serves
// at GET / of its REST API: one HTML page, its style sheet and a little
// JavaScript, embedded in the binary. No build step and no external URL:
// the page must work on a host with no internet, from any agent, with
// nothing else installed. The agent (agent/statuspage.go) serves the files
// and the JSON they poll (GET /status); the page's actions call the
// agents' existing control endpoints, with their authentication.
package statuspage

import (
	"embed"
	"path"
)

//go:embed index.html app.js style.css
var files embed.FS

// Index is the page itself.
func Index() []byte {
	b, _ := files.ReadFile("index.html") // embedded: cannot fail
	return b
}

// Asset is one of the files the page loads (app.js, style.css) and its
// content type; ok is false for any other name.
func Asset(name string) (content []byte, contentType string, ok bool) {
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	ct, known := types[path.Ext(name)]
	if !known || name == "" || path.Base(name) != name {
		return nil, "", false
	}
	b, err := files.ReadFile(name)
	if err != nil {
		return nil, "", false
	}
	return b, ct, true
}
