package agent

// revert is the undo stack of a multi-step change of the host: each step that changed
// something adds the undo of its change under its name once it succeeded. When a later step
// fails, run undoes the changes in reverse order, so the host is left as it was; when all
// steps succeed the stack is dropped.
type revert struct {
	undos []namedUndo
	// ran, when set, is told the name of each undo just before it runs (tests).
	ran func(step string)
}

type namedUndo struct {
	step string
	f    func()
}

// add pushes the undo of step.
func (r *revert) add(step string, f func()) {
	r.undos = append(r.undos, namedUndo{step: step, f: f})
}

// run undoes every pending change, the last one first, and empties the stack.
func (r *revert) run() {
	for i := len(r.undos) - 1; i >= 0; i-- {
		u := r.undos[i]
		if r.ran != nil {
			r.ran(u.step)
		}
		u.f()
	}
	r.undos = nil
}
