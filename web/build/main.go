// Command build bundles the web UI's sources (web/src) and their npm packages (web/node_modules,
// installed from web/package-lock.json with `npm ci`) with esbuild's Go API into
// internal/ui/dist, which the binary embeds. Run it through `make ui`.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/evanw/esbuild/pkg/api"
)

func main() {
	web := flag.String("web", "web", "the directory of package.json, src/ and node_modules/")
	out := flag.String("out", "internal/ui/dist", "where the bundle goes")
	flag.Parse()
	if err := build(*web, *out); err != nil {
		fmt.Fprintln(os.Stderr, "ui build:", err)
		os.Exit(1)
	}
}

func build(web, out string) error {
	if _, err := os.Stat(filepath.Join(web, "node_modules", "@xterm", "xterm", "package.json")); err != nil {
		return fmt.Errorf("the npm packages are missing (%v): run `npm ci --ignore-scripts` in %s first", err, web)
	}
	res := api.Build(api.BuildOptions{
		EntryPoints:       []string{filepath.Join(web, "src", "app.ts")},
		Bundle:            true,
		Outdir:            out,
		EntryNames:        "app",
		MinifyWhitespace:  true,
		MinifyIdentifiers: true,
		MinifySyntax:      true,
		Target:            api.ES2022,
		Format:            api.FormatESModule, // noVNC uses top-level await: the page loads app.js as a module
		Platform:          api.PlatformBrowser,
		Sourcemap:         api.SourceMapNone,
		LegalComments:     api.LegalCommentsLinked,
		Loader:            map[string]api.Loader{".css": api.LoaderCSS},
		NodePaths:         []string{filepath.Join(web, "node_modules")},
		Write:             true,
		LogLevel:          api.LogLevelWarning,
	})
	if len(res.Errors) > 0 {
		return fmt.Errorf("%d errors, first: %s", len(res.Errors), res.Errors[0].Text)
	}
	src, err := os.ReadFile(filepath.Join(web, "src", "index.html"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "index.html"), src, 0o644)
}
