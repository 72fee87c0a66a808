def patch_synthesis_fwd(*a): raise NotImplementedError
